"""Warnings of a finished slide, worded once for the CLI and the flows."""

from __future__ import annotations

from pathlib import Path

from wsi_segment.pipeline.run_warnings import slide_warnings
from wsi_segment.pipeline.segment import SlideResult


def test_a_runtime_fallback_is_one_warning_naming_the_slide() -> None:
    why = "OpenVINO could not compile the graph: out of memory; ran in torch"
    summary = {"precision": {"runtime": "torch", "runtime_warning": why}}
    result = SlideResult("a.svs", "done", Path("out/a"), summary)
    assert slide_warnings(result) == [f"a.svs: {why}"]
    quiet = {"precision": {"runtime": "openvino", "runtime_warning": None}}
    assert slide_warnings(SlideResult("a.svs", "done", Path("out/a"), quiet)) == []
    # an up-to-date slide ran nothing this time: its old warning is not repeated
    assert slide_warnings(SlideResult("a.svs", "up-to-date", Path("out/a"), summary)) == []


def test_pixels_that_are_not_square_are_one_warning_naming_the_stretch() -> None:
    """The model reads at mpp x: a slide whose y differs (metadata of a line scanner, or a
    wrong one) is read stretched; areas use both. A scanner's rounding is no warning."""

    def result(x: float, y: float, status: str = "done") -> SlideResult:
        return SlideResult("a.svs", status, Path("out/a"), {"slide": {"mpp": {"x": x, "y": y}}})

    assert slide_warnings(result(0.25, 0.30)) == [
        "a.svs: its pixels are not square (mpp x 0.25, y 0.3 um): the model read it at mpp x, "
        "so its tissue looked 17 % flatter than it is; if the file's metadata is wrong, pass "
        "--mpp with the true pixel size"
    ]
    assert "looked 25 % taller" in slide_warnings(result(0.5, 0.4))[0]
    assert slide_warnings(result(0.2266, 0.2265)) == []
    assert slide_warnings(result(0.25, 0.30, "up-to-date")) == []  # ran nothing this time


def test_a_gpu_whose_driver_gives_cuda_no_start_is_one_warning_with_the_fix() -> None:
    """`--device auto` on a machine with an NVIDIA driver where CUDA does not start (a driver
    too old for torch's CUDA, a container without the devices) ran on the CPU: said once per
    slide, with torch's reason; never when the CPU was asked for, or a GPU ran."""
    why = "an NVIDIA driver is installed (/dev/nvidiactl) but CUDA does not start: too old"

    def result(device: str, ran: str, status: str = "done") -> SlideResult:
        summary = {
            "parameters": {"device": device},
            "run_policy": {"machine": {"gpu_trouble": why}, "device": {"value": ran}},
        }
        return SlideResult("a.svs", status, Path("out/a"), summary)

    assert slide_warnings(result("auto", "cpu")) == [
        f"a.svs: ran on the CPU, many times slower than on a GPU: {why}; fix the driver or "
        "the CUDA setup (`nvidia-smi` should list the GPU), or pass --device cpu to run on "
        "the CPU on purpose"
    ]
    assert slide_warnings(result("cpu", "cpu")) == []
    assert slide_warnings(result("auto", "cpu", "up-to-date")) == []  # ran nothing this time
