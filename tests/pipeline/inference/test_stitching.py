"""Stitching is exact: chunked, tiled inference equals one pass over the whole region.

The model is analytic (fixed convolutions, receptive field smaller than the tile margin)
and runs through exactly the production path (the engine with the reader thread -> zarr). Centre-crop stitching
on a global grid means every output pixel is computed by one tile whose window contains its
whole receptive field, so the result equals direct inference on the white-padded slide.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from tests.conftest import (
    ENGINE,
    engine_run,
    torch_handle,
)
from tests.engine_jobs import planned_job
from tests.reference_inference import quantise
from tests.wsi.model_box import read_model_box
from wsi_segment.models.meta import ModelMeta
from wsi_segment.models.segmentation_model import SegmentationModel
from wsi_segment.pipeline.inference.host_tiles import HostTiles
from wsi_segment.pipeline.inference.read_sources import ReaderThread
from wsi_segment.pipeline.outputs.ome_zarr import level0_path
from wsi_segment.wsi.slide import open_slide
from wsi_segment.wsi.tiling import TileGrid, plan_chunks

CLASSES = ["A", "B", "C"]


class ConstantClassifier(nn.Module):
    """Says every class is present (logit 10), so the gate never fires."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], len(CLASSES)), 10.0)


class AbsentClassifier(nn.Module):
    """Says class 1 is absent in tiles whose mean red is above a threshold."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full((x.shape[0], len(CLASSES)), 10.0)
        red = x[:, 0].mean(dim=(1, 2))
        logits[red > self.threshold, 1] = -10.0
        return logits


def analytic_model(classifier: nn.Module) -> SegmentationModel:
    torch.manual_seed(0)
    seg = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, len(CLASSES), 3, padding=1)
    )
    with torch.no_grad():
        for p in seg.parameters():
            p.mul_(4.0)
    meta = ModelMeta("analytic", CLASSES, [(255, 0, 0), (0, 255, 0), (0, 0, 255)], 0.499, 64)
    model = SegmentationModel(classifier, seg, meta)
    return model.to_device("cpu")


def run_job(tmp_path, slide_path, model, grid, chunk_tiles, gate=True, batch_size=7):
    slide = open_slide(slide_path, mpp=0.499)
    mpp = slide.require_mpp()
    plan = plan_chunks(slide, mpp[0], model.meta.mpp, grid, chunk_tiles, None)
    store = tmp_path / f"p{grid.overlap}-{chunk_tiles}.zarr"
    job = planned_job(
        slide_path, "auto", plan, grid, torch_handle(model, "analytic"), CLASSES,
        store=store, tissue=None, colors=model.meta.colors, model_mpp=model.meta.mpp,
        mpp_override=0.499, gate=gate,
    )  # fmt: skip
    outcomes = engine_run(
        job,
        plan.specs,
        ReaderThread(HostTiles(job.reader)),
        replace(ENGINE, computes=2, batch=batch_size),
    )
    return np.asarray(zarr.open_array(str(level0_path(store)), mode="r")[:]), plan, outcomes


def direct(slide_path, model, plan, grid) -> np.ndarray:
    """One forward pass over the whole model-space region, padded with white by the margin."""
    slide = open_slide(slide_path, mpp=0.499)
    h_m, w_m = plan.model_shape
    d, m = grid.downsample, grid.margin
    h_pad, w_pad = -(-h_m // d) * d, -(-w_m // d) * d
    image = read_model_box(slide, (-m, -m, w_pad + m, h_pad + m), plan.level0_per_model)
    tiles = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
    seg, _ = model.predict(tiles, gate=False)
    probs = seg[0, :, m : m + h_pad, m : m + w_pad].numpy()
    k = probs.shape[0]
    pooled = probs.reshape(k, h_pad // d, d, w_pad // d, d).mean(axis=(2, 4))
    return quantise(pooled)


@pytest.mark.parametrize(
    ("overlap", "chunk_tiles", "downsample"), [(16, 1, 4), (16, 4, 4), (24, 2, 2), (8, 16, 1)]
)
def test_stitched_equals_direct_inference(
    tmp_path, cmu_region_slide, overlap, chunk_tiles, downsample
):
    model = analytic_model(ConstantClassifier())
    grid = TileGrid(tile=64, overlap=overlap, downsample=downsample)
    stitched, plan, _ = run_job(tmp_path, cmu_region_slide, model, grid, chunk_tiles)
    expected = direct(cmu_region_slide, model, plan, grid)
    assert stitched.shape == expected.shape
    # Same float math in a different batch layout: at most one quantisation step apart.
    diff = np.abs(stitched.astype(int) - expected.astype(int))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.01


def test_result_independent_of_chunk_size(tmp_path, cmu_region_slide):
    model = analytic_model(ConstantClassifier())
    grid = TileGrid(tile=64, overlap=16, downsample=4)
    # One tile per forward pass in both runs: the float math of every tile is then the same
    # by construction (a batch of 1 and a batch of 7 may run different kernels on some CPUs),
    # and only which chunk reads, stitches and writes each tile differs.
    a, _, _ = run_job(tmp_path, cmu_region_slide, model, grid, 1, batch_size=1)
    b, _, _ = run_job(tmp_path, cmu_region_slide, model, grid, 4, batch_size=1)
    np.testing.assert_array_equal(a, b)


def test_gate_zeroes_absent_class_per_tile(tmp_path, cmu_region_slide):
    grid = TileGrid(tile=64, overlap=16, downsample=4)
    # Threshold at the median tile redness so that some tiles are gated and some are not.
    probe = analytic_model(ConstantClassifier())
    slide = open_slide(cmu_region_slide, mpp=0.499)
    plan = plan_chunks(slide, slide.require_mpp()[0], 0.499, grid, 2, None)
    image = read_model_box(slide, (0, 0, plan.model_shape[1], plan.model_shape[0]), 1.0)
    threshold = float(np.median(image[..., 0])) / 255.0
    gated, _, _ = run_job(
        tmp_path, cmu_region_slide, analytic_model(AbsentClassifier(threshold)), grid, 2
    )
    ungated, _, _ = run_job(tmp_path, cmu_region_slide, probe, grid, 2)
    s, m, d = grid.stride, grid.margin, grid.downsample
    checked_absent = checked_present = 0
    for i in range(-(-plan.model_shape[0] // s)):
        for j in range(-(-plan.model_shape[1] // s)):
            tile = read_model_box(
                slide, (j * s - m, i * s - m, j * s - m + 64, i * s - m + 64), 1.0
            )
            core = (slice(i * s // d, (i + 1) * s // d), slice(j * s // d, (j + 1) * s // d))
            if tile[..., 0].mean() / 255.0 > threshold:
                assert gated[1][core].max() == 0
                checked_absent += 1
            else:
                np.testing.assert_array_equal(gated[1][core], ungated[1][core])
                checked_present += 1
    assert checked_absent > 0 and checked_present > 0
