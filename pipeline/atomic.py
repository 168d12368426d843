"""A slide's outputs appear all at once, and a rerun with the same inputs can be recognised.

Outputs are written into a hidden sibling folder and renamed into place only when every file
is complete; on any error the temporary folder is removed, so a crash or a bad slide never
leaves a half-written result that a later run could mistake for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.summary import jsonable
from wsi.errors import OutputError


def params_fingerprint(params: Mapping[str, Any]) -> str:
    """sha256 hex of canonical JSON (sorted keys, no spaces, numpy/tuples normalised)."""
    canonical = json.dumps(
        jsonable(params), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@contextmanager
def atomic_output_dir(final_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh hidden temp folder next to `final_dir`; rename it to `final_dir` on success.

    With `overwrite`, an existing `final_dir` is replaced (moved aside, then deleted after the
    new folder is in place); without it, an existing `final_dir` is an `OutputError`. On any
    exception the temp folder is deleted and the exception propagates.
    """
    final = Path(final_dir)
    if final.exists() and not overwrite:
        raise OutputError(f"{final} already exists; pass --overwrite to replace it")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
    except OSError as exc:
        raise OutputError(
            f"cannot create output folder in {final.parent}: {exc.strerror or exc}; "
            "choose a writable --out"
        ) from exc
    try:
        yield tmp
        _publish(tmp, final, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, final: Path, overwrite: bool) -> None:
    """Rename `tmp` to `final`, moving an old `final` aside first (rename cannot replace a
    non-empty folder) and putting it back if the rename fails."""
    old: Path | None = None
    if final.exists():
        if not overwrite:
            raise OutputError(f"{final} appeared while this run was writing; pass --overwrite")
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:12]}"
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except OSError as exc:
        if old is not None:
            os.replace(old, final)
        raise OutputError(f"cannot move results into {final}: {exc.strerror or exc}") from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
