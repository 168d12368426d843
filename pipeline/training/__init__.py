"""Training: datasets, the three stages (classifier, pseudo masks, segmenter), evaluation.

The entry points below load on first use (torch stays unimported until needed)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsi_segment.lazy_exports import lazy_exports

_EXPORTS = {
    "TrainConfig": "wsi_segment.pipeline.training.train_config",
    "train": "wsi_segment.pipeline.training.train",
    "evaluate": "wsi_segment.pipeline.training.evaluate",
    "open_dataset": "wsi_segment.pipeline.training.datasets",
}
__all__ = ["TrainConfig", "evaluate", "open_dataset", "train"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from wsi_segment.pipeline.training.datasets import open_dataset
    from wsi_segment.pipeline.training.evaluate import evaluate
    from wsi_segment.pipeline.training.train import train
    from wsi_segment.pipeline.training.train_config import TrainConfig
