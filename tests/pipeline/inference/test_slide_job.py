"""A chunk's stored block from cores reduced on the model's device (CPU here) against the
reference path (full float32 maps from `predict`, reduced in numpy, labels from the uint8
values), over a whole real slide."""

from __future__ import annotations

import numpy as np
import torch

from tests.conftest import CMU_SLIDE, torch_handle
from tests.engine_jobs import planned_job
from tests.reference_inference import (
    chunk_alone,
    near_rounding_boundary,
    reference_block,
    unique_positive_max,
)
from wsi_segment.models.bundle import load_model
from wsi_segment.pipeline.inference.slide_job import SlideJob
from wsi_segment.pipeline.outputs.chunk_summary import NODATA
from wsi_segment.wsi.slide import open_slide
from wsi_segment.wsi.tiling import TileGrid, plan_chunks
from wsi_segment.wsi.tissue import detect_tissue


def _sure_gated_model(model_dir):
    """The tiny bundle, fp32, made confident (its random segmentation logits lie ~0.01
    apart; x 500 puts the top class near p = 0.999, far from float32 underflow) and with its
    gate's epsilon at the 30th percentile of the classifier's probabilities, so the gate
    removes the sure class in some tiles and keeps it in others."""
    model = load_model(model_dir).to_device("cpu")
    head = model.segmenter.net.segmentation_head[0]
    with torch.no_grad():
        head.weight.mul_(500.0)
        head.bias.mul_(500.0)
    tiles = torch.randint(0, 256, (16, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    _, cls = model.predict(tiles.to(torch.uint8), gate=False)
    model.meta.gate_epsilon = float(cls.quantile(0.3))
    return model


BATCH = 16  # tiles a forward pass, in the pipeline's path and the reference's alike


def _job(model, grid: TileGrid) -> tuple[SlideJob, list]:
    slide = open_slide(CMU_SLIDE)
    tissue = detect_tissue(slide)
    mpp = slide.require_mpp()[0]
    plan = plan_chunks(slide, mpp, model.meta.mpp, grid, 2, tissue)
    job = planned_job(
        CMU_SLIDE, "auto", plan, grid, torch_handle(model, "tiny"), model.meta.classes,
        store=None, tissue=tissue,
    )  # fmt: skip
    return job, plan.specs


def test_slide_labels_equal_the_reference_except_where_the_gate_removed_the_sure_class(
    tiny_model_dir,
):
    model = _sure_gated_model(tiny_model_dir)
    job, specs = _job(model, TileGrid(tile=64, overlap=16, downsample=4))
    assert specs
    changed = tied = pixels = 0
    for spec in specs:
        got = job.stitch_block(spec, chunk_alone(job, spec, BATCH))
        block, u8, ref_labels = reference_block(job, spec, model, BATCH)
        assert got.probs.shape == u8.shape and got.labels.shape == ref_labels.shape
        # uint8 probabilities as before (a half level apart at most where float sums in
        # another order round differently)
        diff = np.abs(got.probs.astype(int) - u8.astype(int))
        assert diff.max(initial=0) <= 1 and not diff[~near_rounding_boundary(block)].any()
        # labels: the same wherever the stored values have one clear maximum; elsewhere the
        # argmax of the gated float values, nodata only outside tissue or where the gate
        # removed every class
        clear = unique_positive_max(u8)
        tissue = job.tissue_block(spec.out_box)
        want = np.where(block.max(axis=0) > 0, block.argmax(axis=0), NODATA).astype(np.uint8)
        want[clear] = ref_labels[clear]
        want[~tissue] = NODATA
        np.testing.assert_array_equal(got.labels, want)
        changed += int(((ref_labels == NODATA) & (got.labels != NODATA)).sum())
        tied += int((~clear & (u8.max(axis=0) > 0)).sum())
        pixels += int(tissue.sum())
        assert got.bytes_from_model == len(spec.tiles) * (4 * 12 * 12 + 12 * 12 + 4 * 4)
    # the gate removed the sure class in many places: the old path left holes there
    assert changed > 0.01 * pixels, (changed, tied, pixels)
