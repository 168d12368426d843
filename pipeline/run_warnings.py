"""Warnings about a slide run, worded once for every door.

A run can succeed and still need a look: no tissue found, a slide that looks like
fluorescence, `--read-device gpu` falling back to the CPU, OpenVINO falling back to torch. The CLI prints each as a
`warning:` line; the Prefect flows log each at WARNING through the run logger, so a deployed
run shows in its logs what a terminal shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # read without importing the inference stack
    from wsi_segment.pipeline.segment import SlideResult


def slide_warnings(result: SlideResult) -> list[str]:
    """The warnings of one slide's result, each naming the slide, from its summary."""
    summary = result.summary or {}
    warnings = []
    tissue = (summary.get("tissue") or {}).get("warning")
    if tissue:
        warnings.append(f"{result.slide}: {tissue}")
    runtime = (summary.get("precision") or {}).get("runtime_warning")
    if runtime and result.status == "done":
        warnings.append(f"{result.slide}: {runtime}")
    if result.status == "done":  # an up-to-date slide read nothing this time
        requested = (summary.get("parameters") or {}).get("read_device")
        run = summary.get("run_stats") or {}
        if requested == "gpu" and run.get("read_device") == "cpu":
            reason = run.get("read_device_reason", "")
            warnings.append(f"{result.slide}: --read-device gpu: {reason}; read on the CPU")
    return warnings
