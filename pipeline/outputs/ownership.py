"""What in an output folder is ours: recognised before anything is replaced or removed.

A folder at `<out>/<name>` is ours only when it is a real folder (not a symbolic link) whose
`summary.json`, the file a run writes last, is ours (`schema_version` and `fingerprint`) and
that holds nothing but the files that summary lists, and inside the zarr store nothing but
what we write there (`STORE_LAYOUT`; an array's chunk keys only inside the chunk grid its
`.zarray` gives, so a file merely named like a key, `0/0/9/9/9` beside a 1 x 1 x 1 grid, is
not ours). Anything else may be a person's work: it is refused with its path named and left
untouched. Links are never followed to create or delete anything, and a link anywhere in
the folder is not ours.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from wsi_segment.errors import OutputError
from wsi_segment.pipeline.output_files import OUTPUT_FILES, STORE_NAME, SUMMARY_NAME
from wsi_segment.pipeline.outputs.shared_access import describe, this_user, unreadable_folder
from wsi_segment.pipeline.outputs.summary import read_summary


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
    a real folder whose summary.json (written last) is ours, that holds only the files it
    lists, and whose zarr store holds only what a run writes there (`STORE_LAYOUT`: names
    checked in a walk, nothing opened), so replacing it loses nothing a person put there."""
    if os.path.islink(path):
        return "it is a symbolic link"
    if not path.is_dir():
        return "it is not a folder"
    unreadable = unreadable_output(path)
    if unreadable is not None:  # what this user cannot read is not told ours (nor walked)
        return unreadable
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
    # a summary that lists no files (older ones): what any run may write
    ours = (ours or set(OUTPUT_FILES)) | {SUMMARY_NAME}
    written = output.get("store_chunk_files") if isinstance(output, dict) else None
    extra = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.name not in ours or entry.is_symlink():
            extra.append(entry.name)
        elif entry.name == STORE_NAME and entry.is_dir():
            foreign, chunks = _walk_layout(Path(entry.path), STORE_LAYOUT, entry.name)
            extra += foreign
            # more chunk files than the run wrote (a summary that counted them): some file
            # named like a chunk key is someone else's (a store the run left without chunks)
            if isinstance(written, int) and chunks > written:
                extra.append(f"{entry.name}: {chunks} chunk files where the run wrote {written}")
        elif entry.name == STORE_NAME or not entry.is_file():  # not what we write there
            extra.append(entry.name)
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        return f"it also holds files wsi-segment did not write ({shown})"
    return None


@dataclass(frozen=True)
class Node:
    """A folder of the zarr store as we write it: its files, named sub-folders, and folders
    named by a number (pyramid levels) of one kind. `chunk_dims` > 0: a zarr v2 array whose
    chunk keys are that many numbers joined by "/" (nested folders, the last a file)."""

    files: frozenset[str] = frozenset({".zattrs", ".zgroup"})
    folders: tuple[tuple[str, Node], ...] = ()
    numbered: Node | None = None
    chunk_dims: int = 0

    def folder(self, name: str) -> Node | None:
        return next((node for key, node in self.folders if key == name), None)


_ARRAY = frozenset({".zarray", ".zattrs"})
_NUMBER = re.compile(r"[0-9]+")
# The OME-Zarr store (pipeline.outputs.ome_zarr, label_image): bioformats2raw layout,
# series `0/` with its levels (class, y, x) and the label image `0/labels/classes` (y, x).
_LABELS = Node(folders=(("classes", Node(numbered=Node(files=_ARRAY, chunk_dims=2))),))
STORE_LAYOUT = Node(
    folders=(
        ("OME", Node(files=frozenset({".zattrs", ".zgroup", "METADATA.ome.xml"}))),
        ("0", Node(folders=(("labels", _LABELS),), numbered=Node(files=_ARRAY, chunk_dims=3))),
    )
)


def store_chunk_files(store: Path) -> int:
    """How many chunk files the zarr store at `store` holds (every array's, by `STORE_LAYOUT`,
    names only): what a run records in summary.json (`output.store_chunk_files`), so that a
    file named like a chunk key that the run did not write is told apart from its own."""
    return _walk_layout(store, STORE_LAYOUT, store.name)[1]


def _walk_layout(folder: Path, node: Node, shown: str) -> tuple[list[str], int]:
    """(paths under `folder` that `node` does not describe, chunk files that it does): names
    only, and of an array its `.zarray` alone is read (for the chunk grid), so a store of
    thousands of chunks is checked in a walk. A foreign folder is named, not entered."""
    grid = chunk_grid(folder, node.chunk_dims) if node.chunk_dims else ()
    extra: list[str] = []
    chunks = 0
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        name, here = entry.name, f"{shown}/{entry.name}"
        number = _NUMBER.fullmatch(name) is not None
        if entry.is_symlink():
            extra.append(here)
        elif grid and number:  # a chunk key's first part: inside the grid, or not ours
            foreign, found = _not_chunk_key(entry, grid, here)
            extra += foreign
            chunks += found
        elif entry.is_dir():
            sub = node.folder(name) or (node.numbered if number and not node.chunk_dims else None)
            if sub is None:
                extra.append(here)
            else:
                foreign, found = _walk_layout(Path(entry.path), sub, here)
                extra += foreign
                chunks += found
        elif not (entry.is_file() and name in node.files):
            extra.append(here)
    return extra, chunks


def chunk_grid(folder: Path, dims: int) -> tuple[int, ...]:
    """Chunks along each axis of the zarr v2 array at `folder`, from its `.zarray` (a real
    file, `dims` axes, "/" between key parts as we write); () when it is not such an array,
    so no name in it counts as a chunk key."""
    meta_path = folder / ".zarray"
    try:
        meta = None if os.path.islink(meta_path) else json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return ()
    if not isinstance(meta, dict) or meta.get("dimension_separator") != "/":
        return ()
    shape, chunks = meta.get("shape"), meta.get("chunks")
    if not (isinstance(shape, list) and isinstance(chunks, list)):
        return ()
    if len(shape) != dims or len(chunks) != dims:
        return ()
    if not all(isinstance(n, int) and n > 0 for n in (*shape, *chunks)):
        return ()
    return tuple(math.ceil(n / c) for n, c in zip(shape, chunks, strict=True))


def _not_chunk_key(
    entry: os.DirEntry[str], grid: tuple[int, ...], shown: str
) -> tuple[list[str], int]:
    """(`entry` (shown as `shown`) and what is under it that is not a chunk key of an array
    with `grid` chunks per axis, the chunk files under it): numbers below the grid's count on
    each axis, folders for every part but the last, which is a file."""
    if entry.is_symlink() or _NUMBER.fullmatch(entry.name) is None:
        return [shown], 0
    if int(entry.name) >= grid[0]:
        return [shown], 0
    if len(grid) == 1:
        return ([], 1) if entry.is_file() else ([shown], 0)
    if not entry.is_dir():
        return [shown], 0
    extra: list[str] = []
    chunks = 0
    for sub in sorted(os.scandir(entry.path), key=lambda e: e.name):
        foreign, found = _not_chunk_key(sub, grid[1:], f"{shown}/{sub.name}")
        extra += foreign
        chunks += found
    return extra, chunks


def unreadable_summary(folder: Path) -> str | None:
    """Why this user cannot read the summary.json in the real folder `folder`: the folder
    itself it may not list or enter (an earlier version's private output), or the file;
    `path: it cannot be read by user U (owner:group, mode M)`. None: it is readable, absent
    or a link (`not_our_output` says those)."""
    if os.path.islink(folder) or not os.path.isdir(folder):
        return None
    if not os.access(folder, os.R_OK | os.X_OK):
        return cannot_read(folder)
    path = folder / SUMMARY_NAME
    if os.path.islink(path) or not os.path.isfile(path) or os.access(path, os.R_OK):
        return None
    return cannot_read(path)


def unreadable_output(folder: Path) -> str | None:
    """`unreadable_summary`, else the first folder in `folder` this user may not list or
    enter (the zarr store's, which `not_our_output` walks), said the same way; None."""
    why = unreadable_summary(folder)
    if why is None and os.path.isdir(folder) and not os.path.islink(folder):
        blocked = unreadable_folder(folder)
        why = None if blocked is None else cannot_read(blocked)
    return why


def cannot_read(path: Path) -> str:
    return f"{path}: it cannot be read by user {this_user()} ({describe(path)})"


def refuse_foreign(path: Path) -> None:
    """OutputError naming `path` unless it is a finished output of ours (`not_our_output`)."""
    if os.path.islink(path):
        raise link_error(path)
    unreadable = unreadable_output(path)
    if unreadable is not None:
        raise OutputError(
            f"{unreadable}, so whether {path} is a finished "
            "wsi-segment output cannot be told; nothing was changed: ask its owner to let the "
            f"lab read it (chmod -R g+rX {path}), or choose another --out"
        )
    problem = not_our_output(path)
    if problem is not None:
        raise OutputError(
            f"{path} is in the way and is not a wsi-segment output ({problem}); nothing was "
            "changed: move it away or choose another --out"
        )


def refuse_in_the_way(final_dir: Path) -> None:
    """Before any work: OutputError when a link, or anything but a finished output of ours,
    stands at `final_dir`, so a refused run says so at once instead of after loading its
    model. `OutputDir` checks again under the output's lock when the run writes."""
    refuse_link(final_dir)
    if os.path.lexists(final_dir):
        refuse_foreign(final_dir)


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
