"""Unclassified has one value per layer, converted in one place each: 254 in memory
(`models.labels.UNCLASSIFIED`), index K in the outputs (`output_classes`), 255 on disk
(`label_image.UNCLASSIFIED_VALUE`)."""

from __future__ import annotations

import numpy as np

from wsi_segment.models.labels import NODATA, UNCLASSIFIED
from wsi_segment.pipeline.outputs.label_image import UNCLASSIFIED_VALUE, class_ids, label_values
from wsi_segment.pipeline.outputs.output_classes import output_class_counts, output_ids


def test_unclassified_is_254_in_memory_k_in_the_outputs_and_255_on_disk():
    labels = np.array([[0, 1, UNCLASSIFIED], [UNCLASSIFIED, NODATA, 2]], np.uint8)
    assert (UNCLASSIFIED, UNCLASSIFIED_VALUE) == (254, 255)
    np.testing.assert_array_equal(output_ids(labels, 3), [[0, 1, 3], [3, NODATA, 2]])
    np.testing.assert_array_equal(output_class_counts(labels, 3), [1, 1, 1, 2])
    assert output_class_counts(labels, 3).dtype == np.int64
    stored = label_values(labels)
    np.testing.assert_array_equal(stored, [[1, 2, 255], [255, 0, 3]])
    np.testing.assert_array_equal(class_ids(stored), labels)
