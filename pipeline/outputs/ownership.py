"""What in an output folder is ours: recognised before anything is replaced or removed.

A folder at `<out>/<name>` is ours only when it is a real folder (not a symbolic link) whose
`summary.json`, the file a run writes last, is ours (`schema_version` and `fingerprint`) and
that holds nothing but the files that summary lists. Anything else may be a person's work:
it is refused with its path named and left untouched. Links are never followed to create or
delete anything.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from wsi_segment.errors import OutputError
from wsi_segment.pipeline.outputs.summary import read_summary

SUMMARY_NAME = "summary.json"
# What a finished output may hold when its summary lists no files (older summaries).
OUTPUT_FILES = (
    "probabilities.ome.zarr",
    "tissue.geojson",
    "overlay.png",
    SUMMARY_NAME,
    "probabilities.ome.tif",
    "tiles.geojson",
)


def link_error(path: Path) -> OutputError:
    return OutputError(
        f"{path} is a symbolic link; wsi-segment never writes or deletes through links it "
        "did not make: remove the link (or choose another --out) and rerun"
    )


def refuse_link(path: Path) -> None:
    """OutputError naming `path` when it is a symbolic link (dangling ones included)."""
    if os.path.islink(path):
        raise link_error(path)


def not_our_output(path: Path) -> str | None:
    """Why the folder at `path` is not a finished wsi-segment output; None when it is one:
    a real folder whose summary.json (written last) is ours and that holds only the files
    it lists, so replacing it loses nothing a person put there."""
    if os.path.islink(path):
        return "it is a symbolic link"
    if not path.is_dir():
        return "it is not a folder"
    summary_path = path / SUMMARY_NAME
    summary = None if os.path.islink(summary_path) else read_summary(summary_path)
    if (
        summary is None
        or not isinstance(summary.get("schema_version"), int)
        or not isinstance(summary.get("fingerprint"), str)
    ):
        return f"it holds no {SUMMARY_NAME} of a finished wsi-segment run"
    output = summary.get("output")
    listed = output.get("files") if isinstance(output, dict) else None
    ours = {f for f in listed if isinstance(f, str)} if isinstance(listed, list) else set()
    ours = ours or set(OUTPUT_FILES)
    extra = sorted(p.name for p in path.iterdir() if p.name not in ours | {SUMMARY_NAME})
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        return f"it also holds files wsi-segment did not write ({shown})"
    return None


def refuse_foreign(path: Path) -> None:
    """OutputError naming `path` unless it is a finished output of ours (`not_our_output`)."""
    if os.path.islink(path):
        raise link_error(path)
    problem = not_our_output(path)
    if problem is not None:
        raise OutputError(
            f"{path} is in the way and is not a wsi-segment output ({problem}); nothing was "
            "changed: move it away or choose another --out"
        )


def remove_output(path: Path) -> None:
    """Remove a finished output of ours (checked by the caller), its summary.json last, so
    a removal cut short still leaves a folder the next run recognises as ours."""
    for entry in path.iterdir():
        if entry.name == SUMMARY_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    with contextlib.suppress(FileNotFoundError):
        (path / SUMMARY_NAME).unlink()
    path.rmdir()
