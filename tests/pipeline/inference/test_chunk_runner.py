"""Distributed CPU workers run their threads' forward passes side by side, like local runs."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from wsi_segment.models.meta import ModelMeta
from wsi_segment.models.segmentation_model import SegmentationModel
from wsi_segment.pipeline.inference.chunk_job import SlideJob
from wsi_segment.pipeline.inference.chunk_reader import ChunkReader
from wsi_segment.pipeline.inference.chunk_runner import _size_for_this_worker
from wsi_segment.pipeline.inference.model_handle import ModelHandle
from wsi_segment.wsi.tiling import TileGrid


def _job(model: SegmentationModel, per_chunk: int = 0) -> SlideJob:
    return SlideJob(
        reader=ChunkReader(
            slide_path="unused.svs",
            backend="auto",
            mpp_override=None,
            level0_per_model=1.0,
            read_level=0,
            grid=TileGrid(tile=64, overlap=16, downsample=4),
        ),
        n_classes=2,
        batch_size=4,
        gate=True,
        zarr_path="unused.zarr",
        tissue_mask=np.ones((1, 1), bool),
        tissue_downsample=1.0,
        level0_per_output=4.0,
        model=ModelHandle.with_model(model, "analytic", "cpu", "fp32"),
        cpu_threads_per_chunk=per_chunk,
    )


def _model() -> SegmentationModel:
    meta = ModelMeta("analytic", ["a", "b"], [(255, 0, 0), (0, 0, 255)], 1.0, 64)
    cls = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return SegmentationModel(cls, nn.Conv2d(3, 2, 1), meta).to_device("cpu", "fp32")


def test_a_cpu_worker_sizes_its_job_once_to_its_torch_threads() -> None:
    job = _job(_model())
    _size_for_this_worker(job)  # outside a worker: as one with a single thread
    cores = len(os.sched_getaffinity(0))
    assert job.cpu_threads_per_chunk == max(1, min(torch.get_num_threads(), cores))
    sized = _job(_model(), per_chunk=3)
    _size_for_this_worker(sized)
    assert sized.cpu_threads_per_chunk == 3  # a job already sized keeps its figure


def test_a_pinned_cpu_precision_applies_to_cpu_workers_only() -> None:
    from wsi_segment.pipeline.inference.model_handle import precision_to_load

    assert precision_to_load("fp32", "cpu") == precision_to_load("fp32", "cuda") == "fp32"
    assert precision_to_load("bf16", "cpu") == "bf16"  # a cluster's trial said bf16
    assert precision_to_load("bf16", "cuda") == "auto"  # a GPU worker decides for itself
    assert precision_to_load("auto", "cpu") == precision_to_load("auto", "cuda") == "auto"
