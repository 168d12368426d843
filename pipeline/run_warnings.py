"""Warnings about a slide run, worded once for every door.

A run can succeed and still need a look: no tissue found, a slide that looks like
fluorescence, `--read-device gpu` falling back to the CPU, OpenVINO falling back to torch,
outputs of an earlier version under the folder name it used (left untouched). The CLI prints
each as a
`warning:` line; the Prefect flows log each at WARNING through the run logger, so a deployed
run shows in its logs what a terminal shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from wsi_segment.pipeline.output_files import SUMMARY_NAME
from wsi_segment.pipeline.outputs.naming import legacy_output_name
from wsi_segment.pipeline.outputs.output_name import default_output_name
from wsi_segment.pipeline.outputs.summary import read_summary

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
    earlier = earlier_output_folder(result)
    if earlier is not None:
        warnings.append(
            f"{result.slide}: {earlier} holds this slide's outputs from a version that named "
            f"the folder by Python's stem; it was left untouched, and this run's outputs are "
            f"in {result.out_dir} (the folder QuPath's import script looks for); remove the "
            "old folder when you no longer need it"
        )
    return warnings


def earlier_output_folder(result: SlideResult) -> Path | None:
    """The output folder an earlier version gave this slide (`a.ome` for `a.ome.tif`) when
    one with a summary is there beside this run's and its name differs."""
    if result.out_dir is None or result.status not in ("done", "up-to-date"):
        return None
    out_dir = Path(result.out_dir)
    if out_dir.name != default_output_name(result.slide):
        return None  # a name the user chose: the old rule never applied
    legacy = out_dir.parent / legacy_output_name(result.slide)
    if legacy.name == out_dir.name or legacy.is_symlink():
        return None
    return legacy if read_summary(legacy / SUMMARY_NAME) is not None else None
