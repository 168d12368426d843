"""`--read-device`: decided by the run policy in `prepare` before any decoder starts, reported
in summary.json, results unchanged. On the CPU device `gpu` runs the device read path with libjpeg, whose
tiles are byte-identical to the decoder processes', so the outputs are too."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.conftest import CMU_SLIDE, DATA_DIR
from tests.engine_leaks import shm_entries
from tests.wsi import qupath_exports as qp
from wsi_segment.errors import ConfigError
from wsi_segment.pipeline.inference.read_sources import read_level_and_scale, slide_reads
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.read_policy import ASKED_CPU, NOT_CUDA, RGB_CODED, ReadFacts
from wsi_segment.pipeline.run_policy import RunFacts, decide
from wsi_segment.pipeline.segment import prepare, segment_slide
from wsi_segment.wsi.region_reader import SERVING_TOLERANCE
from wsi_segment.wsi.slide import open_slide

OME_TIFF = DATA_DIR / "OS-1-detail.ome.tif"


def level0_params(model_dir: Path, read_device: str, **more) -> SegmentParams:
    """The tiny model (2 um/px) on OS-1 taken as 2 um/px: model pixels are level-0 pixels.
    One decoder: the engine then batches the chunks in plan order, as the device reader.
    torch: these tests are about reads (the runtime choice has its own tests)."""
    return SegmentParams(
        model_dir=model_dir,
        device="cpu",
        precision="fp32",
        mpp=2.0,
        chunk_tiles=2,
        read_device=read_device,
        **({"decoders": 1, "runtime": "torch"} | more),
    )


def storage_corners_roi(path: Path) -> Path:
    """Four rectangles, each over a corner where four of OS-1's 512 px storage tiles meet:
    every one of its 3 x 3 storage tiles is read, most by several chunks and by tiles that
    straddle two or four of them, in about 120 of the slide's 529 tiles (reads are the
    subject; the forward passes of the other tiles were most of the test's time)."""
    corners = [(512, 512), (1024, 512), (512, 1024), (1024, 1024)]
    regions = [
        qp.annotation(qp.rect(x - 120, y - 120, min(x + 120, 1101), min(y + 120, 1101)), f"{x}-{y}")
        for x, y in corners
    ]
    return qp.export(path, regions)


def test_the_device_read_path_writes_what_the_decoder_processes_write(tmp_path, tiny_model_dir):
    before = shm_entries()
    # overlap 16, not 32: 48 px cores, about half the tiles of the default (reads are the subject)
    roi = storage_corners_roi(tmp_path / "corners.geojson")
    cpu_reads = level0_params(tiny_model_dir, "cpu", overlap=16, roi=roi)
    gpu_reads = level0_params(tiny_model_dir, "gpu", overlap=16, roi=roi)
    device = segment_slide(OME_TIFF, tmp_path / "gpu", gpu_reads)
    cpu = segment_slide(OME_TIFF, tmp_path / "cpu", cpu_reads)
    assert device.summary["run_stats"]["read_device"] == "gpu"
    assert device.summary["run_stats"]["read_device_reason"] == "libjpeg"
    assert cpu.summary["run_stats"]["read_device"] == "cpu"
    assert cpu.summary["run_stats"]["read_device_reason"] == ASKED_CPU
    # 3 x 3 storage tiles of 512 px, each decoded once for the slide's many chunks
    assert device.summary["read_stats"]["storage_tiles_decoded"] == 9
    assert device.summary["read_stats"]["storage_tiles_reused"] > 9
    assert device.summary["run_stats"]["tiles_run"] == cpu.summary["run_stats"]["tiles_run"] > 100
    assert device.summary["classes"] == cpu.summary["classes"]
    for level in ("0", "1"):
        a = zarr.open_array(device.out_dir / "probabilities.ome.zarr" / "0" / level, mode="r")
        b = zarr.open_array(cpu.out_dir / "probabilities.ome.zarr" / "0" / level, mode="r")
        np.testing.assert_array_equal(a[:], b[:])
    geojson = "tissue.geojson"
    assert (device.out_dir / geojson).read_text() == (cpu.out_dir / geojson).read_text()
    # not in the fingerprint: the other setting's outputs are up to date
    again = segment_slide(OME_TIFF, tmp_path / "gpu", cpu_reads)
    assert again.status == "up-to-date"
    assert multiprocessing.active_children() == [] and shm_entries() <= before


def test_prepare_starts_no_decoders_when_the_device_reads(tmp_path, tiny_model_dir):
    gpu_reads = level0_params(tiny_model_dir, "gpu", decoders=2)
    prep = prepare(OME_TIFF, tmp_path, gpu_reads, early=True)
    try:
        assert prep.decode_pool is None and prep.prefetch is None
        assert multiprocessing.active_children() == []
        assert prep.policy is not None and prep.policy.read_device.value == "gpu"
        assert prep.policy.decoders.value == 0 and prep.read_tiles is not None
    finally:
        prep.close_prefetch()
        prep.slide.close()
    prep = prepare(OME_TIFF, tmp_path, level0_params(tiny_model_dir, "cpu", decoders=2), early=True)
    try:
        assert prep.decode_pool is not None  # the decoder processes, as before
        assert prep.read_tiles is None
    finally:
        prep.close_prefetch()
        prep.slide.close()
    assert multiprocessing.active_children() == []


def test_a_slide_the_device_cannot_read_falls_back_with_the_reason(
    tmp_path, tiny_model_dir, cmu_region_slide
):
    """A crop of CMU-1 at its own 0.499 um/px: the 2 um/px model's pixels are resampled on
    the CPU. The whole crop is tissue (too small to detect it on), run in torch as
    `level0_params` runs: the test is about reads."""
    p = SegmentParams(
        model_dir=tiny_model_dir,
        device="cpu",
        precision="fp32",
        runtime="torch",
        mpp=0.499,
        tissue="all",
        read_device="gpu",
    )
    result = segment_slide(cmu_region_slide, tmp_path, p)
    run = result.summary["run_stats"]
    assert run["read_device"] == "cpu"
    assert run["read_device_reason"].startswith("model pixels are not level 0's pixels")
    assert run["tiles_run"] > 0


def test_the_cli_says_once_why_gpu_reads_fell_back(tmp_path, tiny_model_dir):
    # one region of 500 x 400 level-0 px: the slide's own mpp (the warning's numbers), a
    # small part of its model tiles (the warning is the subject, not the forward passes)
    roi = qp.export(
        tmp_path / "region.geojson", [qp.annotation(qp.rect(800, 1100, 1300, 1500), "r")]
    )
    out = tmp_path / "out"
    args = [str(CMU_SLIDE), "--model", str(tiny_model_dir), "--out", str(out), "--quiet"]
    args += ["--roi", str(roi)]
    # torch: the warning is about reads (under auto, a cold OpenVINO export cost ~16 s)
    cli = [sys.executable, "-m", "wsi_segment.flows.cli", *args, "--read-device", "gpu"]
    cli += ["--runtime", "torch"]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "--read-device gpu" in line]
    assert warnings == [
        f"warning: {CMU_SLIDE}: --read-device gpu: model pixels are not level 0's pixels "
        "(4.00802 level-0 px per model px, level downsample 1): resampling runs on the CPU; "
        "read on the CPU"
    ]
    summary = json.loads((out / "CMU-1-Small-Region" / "summary.json").read_text())
    assert summary["parameters"]["read_device"] == "gpu"


def test_auto_reads_on_the_device_only_on_cuda_with_nvjpeg():
    """The slides' facts as `prepare` and the bands gather them, decided for an H100."""
    from tests.pipeline.test_run_policy import CPU_ONLY, ONE_H100

    ome = open_slide(OME_TIFF, mpp=2.0)
    key = read_level_and_scale(ome, 2.0, 2.0, SERVING_TOLERANCE)
    assert key == (0, 1.0)
    facts, tiles = slide_reads(str(OME_TIFF), ome, key)
    assert facts == ReadFacts(ycbcr=True) and tiles is not None

    def reads(machine, asked: str, facts: ReadFacts) -> tuple[str, str]:
        policy = decide(machine, SegmentParams(read_device=asked), RunFacts(reads=facts))
        return policy.read_device.value, policy.read_device.reason

    assert reads(ONE_H100, "auto", facts) == ("gpu", "nvjpeg")
    assert reads(CPU_ONLY, "auto", facts) == ("cpu", NOT_CUDA)
    assert reads(CPU_ONLY, "gpu", facts) == ("gpu", "libjpeg")
    assert reads(ONE_H100, "cpu", facts) == ("cpu", ASKED_CPU)
    cmu = open_slide(CMU_SLIDE, mpp=2.0)
    rgb, _tiles = slide_reads(
        str(CMU_SLIDE), cmu, read_level_and_scale(cmu, 2.0, 2.0, SERVING_TOLERANCE)
    )
    assert rgb == ReadFacts(ycbcr=False)
    assert reads(ONE_H100, "auto", rgb) == ("cpu", RGB_CODED)  # Aperio: the decoder processes
    assert reads(ONE_H100, "gpu", rgb) == ("gpu", "libjpeg")
    ome.close()
    cmu.close()


def test_an_unknown_read_device_is_a_config_error():
    with pytest.raises(ConfigError, match="read device 'npu'; choose one of auto, cpu, gpu"):
        SegmentParams(read_device="npu")
