"""Warnings about a slide run, worded once for every door.

A run can succeed and still need a look: no tissue found, a slide that looks like
fluorescence, a GPU whose driver gives CUDA no start (the model then ran on the CPU),
`--read-device gpu` falling back to the CPU, OpenVINO falling back to torch, pixels that are
not square, outputs of an earlier version under the folder name it used (left
untouched). The CLI prints each as a `warning:` line; the Prefect flows log each at WARNING
through the run logger, so a deployed run shows in its logs what a terminal shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_segment.pipeline.output_files import SUMMARY_NAME
from wsi_segment.pipeline.outputs.naming import legacy_output_name
from wsi_segment.pipeline.outputs.output_name import default_output_name
from wsi_segment.pipeline.outputs.summary import read_summary

# mpp x and y of one slide differ by scanners' rounding (0.2266 / 0.2265), never by this
SQUARE_TOLERANCE = 0.02

if TYPE_CHECKING:  # read without importing the inference stack
    from wsi_segment.pipeline.segment import SlideResult


def slide_warnings(result: SlideResult) -> list[str]:
    """The warnings of one slide's result, each naming the slide, from its summary."""
    summary = result.summary or {}
    warnings = []
    tissue = (summary.get("tissue") or {}).get("warning")
    if tissue:
        warnings.append(f"{result.slide}: {tissue}")
    no_gpu = gpu_trouble(summary)
    if no_gpu is not None and result.status == "done":
        warnings.append(f"{result.slide}: {no_gpu}")
    runtime = (summary.get("precision") or {}).get("runtime_warning")
    if runtime and result.status == "done":
        warnings.append(f"{result.slide}: {runtime}")
    if result.status == "done":  # an up-to-date slide read nothing this time
        requested = (summary.get("parameters") or {}).get("read_device")
        run = summary.get("run_stats") or {}
        if requested == "gpu" and run.get("read_device") == "cpu":
            reason = run.get("read_device_reason", "")
            warnings.append(f"{result.slide}: --read-device gpu: {reason}; read on the CPU")
    stretch = non_square_pixels(summary)
    if stretch is not None and result.status == "done":
        warnings.append(f"{result.slide}: {stretch}")
    earlier = earlier_output_folder(result)
    if earlier is not None:
        warnings.append(
            f"{result.slide}: {earlier} holds this slide's outputs from a version that named "
            f"the folder by Python's stem; it was left untouched, and this run's outputs are "
            f"in {result.out_dir} (the folder QuPath's import script looks for); remove the "
            "old folder when you no longer need it"
        )
    return warnings


def gpu_trouble(summary: dict[str, Any]) -> str | None:
    """Why a run that would have used the GPU (`--device auto`) ran on the CPU, where the
    machine has an NVIDIA driver that gives CUDA no start (`machine.probe_gpus`): a GPU lab's
    nightly run after a driver update would otherwise take days without a word."""
    policy = summary.get("run_policy") or {}
    trouble = (policy.get("machine") or {}).get("gpu_trouble")
    asked = (summary.get("parameters") or {}).get("device")
    if not trouble or asked != "auto" or (policy.get("device") or {}).get("value") != "cpu":
        return None
    return (
        f"ran on the CPU, many times slower than on a GPU: {trouble}; fix the driver or the "
        "CUDA setup (`nvidia-smi` should list the GPU), or pass --device cpu to run on the "
        "CPU on purpose"
    )


def non_square_pixels(summary: dict[str, Any]) -> str | None:
    """Why a slide's pixels, not square in its metadata (mpp x and y differ by more than
    `SQUARE_TOLERANCE`), are read stretched: the model reads at one scale, mpp x, so a
    y pixel larger than an x pixel squeezes tissue flatter (to x / y of its height); areas
    use both. None for square pixels."""
    mpp = (summary.get("slide") or {}).get("mpp") or {}
    x, y = mpp.get("x"), mpp.get("y")
    if not isinstance(x, float | int) or not isinstance(y, float | int) or x <= 0 or y <= 0:
        return None
    if abs(y / x - 1) <= SQUARE_TOLERANCE:
        return None
    return (
        f"its pixels are not square (mpp x {x:g}, y {y:g} um): the model read it at mpp x, so "
        f"its tissue looked {100 * abs(x / y - 1):.0f} % "  # height on screen: x / y of true
        f"{'flatter' if y > x else 'taller'} than it is; if the file's metadata is "
        "wrong, pass --mpp with the true pixel size"
    )


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
