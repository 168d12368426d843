"""A slide's failure, written down beside its outputs: `<out>/.<name>.failed.json`.

A nightly batch must not retry a broken slide every night and turn every run red until
someone removes it: the record says which slide (path, size, mtime), model and parameters
failed, how and when, so the next run can tell the same failure from a new one
(`pipeline.known_failures`). The file is hidden like the run's `.<name>.lock` and
`.<name>.partial` (an output name never starts with '.', so it meets no output folder).

The file is ours only when it is a regular file (not a link) holding our JSON (`kind` and
`schema_version`). It is written to a fresh temporary file and renamed into place, so a
reader sees a whole record or none; it is replaced or removed only when the file there is
ours, and a link there is never followed. What is in the way is left alone and reported.

A lab's users share the output folder (a service user's nightly run, an admin's trial, an
operator's `--retry-failed`): a record is ours by its content, whoever wrote it, and is
written with its folder's group and permissions (`shared_access.follow_folder`), so any
user the folder lets in reads and replaces it. A record this user cannot read is reported
as such (owner, mode), never mistaken for someone else's file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from wsi_segment.pipeline.outputs.shared_access import (
    follow_folder,
    unreadable_file,
    unwritable_folder,
)

RECORD_KIND = "wsi-segment failed slide"
SCHEMA_VERSION = 1
RECORD_SUFFIX = ".failed.json"
# What a record must hold to be read as one: anything less is not ours (or is damaged).
REQUIRED_TEXT = ("fingerprint", "since_utc", "failed_utc", "error_class", "message")


def record_path(out_root: str | Path, name: str) -> Path:
    """Where the failure record of the output folder `name` lives."""
    return Path(out_root) / f".{name}{RECORD_SUFFIX}"


def _load_ours(path: Path) -> dict[str, Any] | None:
    """The record at `path` when the file there is ours; None otherwise (absent, a link,
    not a regular file, unreadable, not our JSON)."""
    if os.path.islink(path) or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("kind") != RECORD_KIND:
        return None
    if not isinstance(data.get("schema_version"), int):
        return None
    if not all(isinstance(data.get(key), str) for key in REQUIRED_TEXT):
        return None
    return data


def read_record(out_root: str | Path, name: str) -> dict[str, Any] | None:
    """The failure record of `name`, or None when there is none of ours."""
    return _load_ours(record_path(out_root, name))


def not_our_record(path: Path) -> str | None:
    """Why the file at `path` may not be replaced or removed; None when it is absent or ours."""
    if os.path.islink(path):
        return "it is a symbolic link"
    if not os.path.lexists(path):
        return None
    if _load_ours(path) is None:
        if path.is_file():
            unreadable = unreadable_file(path)
            if unreadable is not None:
                return f"{unreadable}; let this user read it (e.g. chmod g+r) so it is used"
        return "it is not a failure record wsi-segment wrote"
    return None


def write_record(out_root: str | Path, name: str, record: dict[str, Any]) -> str | None:
    """Write `record` (our kind and schema added) as the failure record of `name`, at once
    (a temporary file renamed into place). Returns None when written, else why not (the
    file there is not ours, or the folder is not writable); nothing else is changed."""
    path = record_path(out_root, name)
    problem = not_our_record(path)
    if problem is not None:
        return f"{path} is in the way ({problem}); left as it is"
    data = {"kind": RECORD_KIND, "schema_version": SCHEMA_VERSION, **record}
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # as the run would have made it
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    except OSError as exc:
        return f"{path}: cannot write the failure record ({unwritable_folder(path.parent, exc)})"
    try:
        follow_folder(fd, path.parent)  # mkstemp makes it 0600: the lab's users read it too
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        problem = not_our_record(path)  # checked again: the write took time
        if problem is not None:
            return f"{path} is in the way ({problem}); left as it is"
        os.replace(tmp, path)
    except OSError as exc:
        return f"{path}: cannot write the failure record ({unwritable_folder(path.parent, exc)})"
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return None


def clear_record(out_root: str | Path, name: str) -> bool:
    """Remove the failure record of `name` if the file there is ours; True when removed.
    Anything else at that path (a link, a person's file) is left alone."""
    path = record_path(out_root, name)
    if _load_ours(path) is None:
        return False
    try:
        path.unlink()
    except OSError:  # gone already, or the folder became read-only: the next run retries
        return False
    return True
