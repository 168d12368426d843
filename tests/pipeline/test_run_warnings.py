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
