"""A slide's output folder appears all at once, and two runs never write it together.

Work happens in a hidden sibling `.<name>.partial` that is renamed to `<name>` only when
every file is written; on any error the partial folder is removed, so nothing that looks
finished is ever left behind. An exclusive `flock` on `.<name>.lock` keeps a second run on
the same slide and output folder from interfering (the kernel drops the lock if the holder
is killed, so a SIGKILLed run never blocks the next one). The lock file itself stays: removing
it would let a third run lock a new file while a second still holds the old one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

from pipeline.summary import read_summary
from wsi.errors import OutputError

SUMMARY_NAME = "summary.json"


def read_previous_summary(final_dir: Path) -> dict[str, Any] | None:
    """The summary of a finished run in `final_dir`, or None when there is none."""
    return read_summary(Path(final_dir) / SUMMARY_NAME)


class OutputDir:
    """Context manager: lock, temporary work folder, atomic publish on `commit()`."""

    def __init__(self, out_root: Path, name: str, overwrite: bool) -> None:
        self.out_root = Path(out_root)
        self.final_dir = self.out_root / name
        self.work_dir = self.out_root / f".{name}.partial"
        self.lock_path = self.out_root / f".{name}.lock"
        self.overwrite = overwrite
        self._lock_fd: int | None = None
        self.committed = False

    def __enter__(self) -> OutputDir:
        try:
            self.out_root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as exc:
            raise OutputError(
                f"{self.out_root}: cannot write outputs here ({exc.strerror}); "
                "choose a writable folder with --out"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise OutputError(
                f"{self.final_dir}: another wsi-segment run is writing this output right now; "
                "wait for it to finish or choose another --out"
            ) from exc
        self._lock_fd = fd
        try:
            self._check_final()
        except OutputError:
            self._release()
            raise
        try:
            if self.work_dir.exists():  # left by a killed run
                shutil.rmtree(self.work_dir)
            self.work_dir.mkdir()
        except OSError as exc:
            self._release()
            raise output_error(self.work_dir, exc) from exc
        return self

    def _check_final(self) -> None:
        """Never replace a file, nor a folder without --overwrite: a published folder only
        comes from a finished run (atomic rename), so anything else there is not ours."""
        if self.final_dir.exists() and not self.final_dir.is_dir():
            raise OutputError(
                f"{self.final_dir} exists and is not an output folder; "
                "move it away or choose another --out"
            )
        if self.final_dir.exists() and not self.overwrite:
            raise OutputError(f"{self.final_dir} already exists; pass --overwrite")

    def commit(self) -> None:
        """Publish: replace the final folder by the finished work folder."""
        self._check_final()
        try:
            if self.final_dir.exists():
                old = self.out_root / f".{self.final_dir.name}.old"
                if old.exists():
                    shutil.rmtree(old)
                os.replace(self.final_dir, old)
                os.replace(self.work_dir, self.final_dir)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self.work_dir, self.final_dir)
        except OSError as exc:
            raise output_error(self.final_dir, exc) from exc
        self.committed = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.committed:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None


def output_error(path: Path, exc: OSError) -> OutputError:
    if exc.errno == errno.ENOSPC:
        return OutputError(f"{path}: disk full while writing outputs; free space and rerun")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"{path}: output folder is not writable; choose another --out")
    return OutputError(f"{path}: cannot write outputs: {exc}")
