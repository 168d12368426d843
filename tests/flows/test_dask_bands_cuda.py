"""GPU workers of our local cluster run bands by default (CUDA only: skipped without one)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from tests.conftest import CMU_SLIDE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_gpu_workers_run_bands_by_default_within_one_level_of_the_cpu(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from distributed import get_task_stream

    from wsi_segment.flows.dask_cluster import dask_client
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.segment import segment_slide

    params = SegmentParams(model_dir=tiny_model_dir, precision="fp32", chunk_tiles=2)
    with dask_client(workers=1) as client:  # one worker per GPU, each with a GPU resource
        client.wait_for_workers(1, timeout=120)
        with get_task_stream(client=client) as stream:
            result = segment_slide(CMU_SLIDE, tmp_path / "gpu", params, client=client)
    assert result.status == "done"
    keys = [str(t["key"]) for t in stream.data]
    assert any(k.startswith("band-") for k in keys)
    run_stats = json.loads((tmp_path / "gpu" / CMU_SLIDE.stem / "summary.json").read_text())[
        "run_stats"
    ]
    assert run_stats["read_device"] in ("gpu", "cpu") and run_stats["read_device_reason"]
    cpu = dataclasses.replace(params, device="cpu")
    assert segment_slide(CMU_SLIDE, tmp_path / "cpu", cpu).status == "done"
    store = f"{CMU_SLIDE.stem}/probabilities.ome.zarr/0/0"
    gpu_probs = np.asarray(zarr.open_array(str(tmp_path / "gpu" / store), mode="r")[:])
    cpu_probs = np.asarray(zarr.open_array(str(tmp_path / "cpu" / store), mode="r")[:])
    assert np.abs(gpu_probs.astype(int) - cpu_probs.astype(int)).max() <= 1
