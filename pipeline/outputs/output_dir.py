"""A slide's output folder and its atomic lifecycle.

The folder's name is checked in `output_name`, the run's identity (what makes an output
"up to date") is `run_identity`; this module owns what happens on disk.

**Lifecycle.** The folder appears all at once, and two runs never write it together. Work
happens in a hidden sibling `.<name>.partial` that is renamed to `<name>` only when every
file is written; on any error the partial folder is removed, so nothing that looks finished
is ever left behind. An exclusive `flock` on `.<name>.lock` keeps a second run on the same
slide and output folder from interfering (the kernel drops the lock if the holder is
killed, so a SIGKILLed run never blocks the next one).

The lock file is removed when a run ends (done, failed or refused for an existing folder),
so a failed run leaves nothing. Removing a lock file is only safe with two rules, both here:
the holder unlinks it while it still holds the lock, as its very last step; and a run that
got the lock checks that the file it locked is still the one at `.<name>.lock`. Without the
check, a second run that opened the file just before the holder removed it would lock the
removed file while a third run locks a new one, and both would write. With it, the second
run sees a removed file and starts over on the new one (refused if the third holds it).
Only a SIGKILLed run leaves its (empty) lock file behind; the next run takes it over.
The folders a run created for `--out` (a new path) are removed again, if still empty, when
it ends without output; a run that finds its folder gone before it could lock there (another
run removed the empty folder it had made) makes it again.

**Ours, and only ours.** A folder at `<name>` is replaced (with --overwrite) only when it is
a finished output of ours: a real folder (not a symlink) whose `summary.json`, written last,
is ours (`schema_version` and `fingerprint`) and that holds nothing but the files that
summary lists. Anything else there is refused, untouched, with the folder named. The same
rule holds for `.<name>.old`, the previous output set aside while a new one is published.
Symbolic links at `<name>`, `.<name>.partial`, `.<name>.old` or `.<name>.lock` are never
followed to create or delete: the run is refused and the link left alone (`--out` itself may
be a link: it is the user's choice of where outputs go).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from wsi_segment.errors import OutputBusy, OutputError
from wsi_segment.pipeline.output_files import SUMMARY_NAME
from wsi_segment.pipeline.outputs.ownership import (
    link_error,
    refuse_foreign,
    refuse_in_the_way,
    refuse_link,
    remove_output,
)
from wsi_segment.pipeline.outputs.shared_access import (
    describe,
    follow_folder,
    share_tree,
    this_user,
    unremovable_folder,
    unwritable_outputs,
)
from wsi_segment.pipeline.outputs.summary import read_summary

log = logging.getLogger(__name__)

# Each retry means another run removed the lock file between our open and our flock, i.e.
# finished just then; more than a few in a row would take runs finishing in a tight loop.
LOCK_ATTEMPTS = 20


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
        self._made: tuple[Path, ...] = ()  # folders of out_root this run created, deepest first
        self.committed = False

    def __enter__(self) -> OutputDir:
        try:
            self._lock_fd = self._lock()
            self._check_final()
            self._check_replaceable()
            try:
                if os.path.lexists(self.work_dir):  # left by a killed run (a link was refused)
                    self._remove_stale_work_dir()
                self.work_dir.mkdir()
            except OSError as exc:
                raise output_error(self.work_dir, exc) from exc
        except OutputError:
            self._release()
            remove_empty_folders(self._made)  # refused: nothing of this run is left
            raise
        return self

    def _remove_stale_work_dir(self) -> None:
        """Remove the partial folder of a run that stopped (we hold the lock, so its run is
        gone); one another user's run left and this user may not remove is named as such."""
        try:
            shutil.rmtree(self.work_dir)
        except PermissionError as exc:
            raise OutputError(
                f"{self.work_dir} was left by a run that stopped, and user {this_user()} may "
                f"not remove it ({describe(self.work_dir)}; a file inside: {exc.filename}); "
                "remove it as its owner (or root), or give the lab's runs a group-writable "
                "umask (the systemd units use UMask=0002)"
            ) from exc

    def _check_replaceable(self) -> None:
        """Before any work, what publishing must remove: the previous output a replace set
        aside and could not remove (`.<name>.old`) goes now, and a folder `--overwrite` will
        replace must be one this user may remove (a member's trial run under a umask without
        group write is not), else the run is refused naming who may, not after the slide."""
        if os.path.lexists(self.old_dir):
            self._refuse_unremovable(self.old_dir, "the previous output a replace set aside")
            try:
                remove_output(self.old_dir)
            except OSError as exc:
                raise output_error(self.old_dir, exc) from exc
        if self.overwrite and os.path.lexists(self.final_dir):
            self._refuse_unremovable(self.final_dir, "the output --overwrite replaces")

    def _refuse_unremovable(self, folder: Path, what: str) -> None:
        held = unremovable_folder(folder)
        if held is not None:
            raise OutputError(
                f"{folder} ({what}) cannot be removed: user {this_user()} may not remove what "
                f"is in {held} ({describe(held)}); remove it as its owner (or root), or give "
                "the lab's runs a group-writable umask (the systemd units use UMask=0002)"
            )

    def _lock(self) -> int:
        """An fd holding the exclusive lock on the file now at `lock_path` (see the module
        docstring: a file removed by its finishing holder after our open is retried)."""
        busy = OutputBusy(
            f"{self.final_dir}: another wsi-segment run is writing this output right now; "
            "wait for it to finish or choose another --out"
        )
        for attempt in range(LOCK_ATTEMPTS):
            try:
                made = make_folders(self.out_root)
                self._made = tuple(dict.fromkeys(made + self._made))  # deepest first
                fd = open_lock_file(self.lock_path)
            except FileNotFoundError as exc:
                if attempt + 1 < LOCK_ATTEMPTS:
                    continue  # another run removed the empty folder it made: make it again
                raise self._unwritable(exc) from exc  # e.g. --out a link to nothing
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # a symlink: never create or lock its target
                    raise link_error(self.lock_path) from exc
                raise self._unwritable(exc) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                raise busy from exc
            if is_linked_at(fd, self.lock_path):
                return fd
            os.close(fd)  # locked a removed file: its holder just finished; lock the new one
        raise busy

    def _unwritable(self, exc: OSError) -> OutputError:
        return unwritable_outputs(self.out_root, exc)

    def _check_final(self) -> None:
        """Replace only a finished output of ours, and only with --overwrite; refuse links
        and anything else at our names before any work is done (module docstring)."""
        refuse_link(self.work_dir)
        if os.path.lexists(self.work_dir) and not self.work_dir.is_dir():
            raise OutputError(
                f"{self.work_dir} is in the way and is not a folder wsi-segment left; nothing "
                "was changed: move it away or choose another --out"
            )
        refuse_link(self.old_dir)
        if os.path.lexists(self.old_dir):  # set aside by a replace that was killed
            refuse_foreign(self.old_dir)
        refuse_in_the_way(self.final_dir)  # what `prepare` checked before any work, again
        if os.path.lexists(self.final_dir) and not self.overwrite:
            raise OutputError(f"{self.final_dir} already exists; pass --overwrite")

    @property
    def old_dir(self) -> Path:
        return self.out_root / f".{self.final_dir.name}.old"

    def commit(self) -> None:
        """Publish: replace the final folder by the finished work folder."""
        self._check_final()
        share_tree(self.work_dir, self.out_root)  # a member's --overwrite may replace it
        try:
            if os.path.lexists(self.old_dir):
                remove_output(self.old_dir)
            if os.path.lexists(self.final_dir):
                os.replace(self.final_dir, self.old_dir)
                os.replace(self.work_dir, self.final_dir)
                try:
                    remove_output(self.old_dir)
                except OSError as exc:  # the next run removes it, or says who may
                    log.warning("%s: the previous output was replaced, but %s is left (%s)",
                                self.final_dir, self.old_dir, exc)  # fmt: skip
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
            remove_work_dir(self.work_dir)
        self._release()
        if not self.committed:
            remove_empty_folders(self._made)

    def _release(self) -> None:
        """Remove the lock file while still holding the lock, then unlock (the last step:
        a run that locks a new lock file from here on may use the output folder at once)."""
        if self._lock_fd is not None:
            # only our own file (someone may have deleted it by hand and a new run made a
            # new one); OSError: e.g. the folder became read-only, the next run takes it over
            with contextlib.suppress(OSError):
                if is_linked_at(self._lock_fd, self.lock_path):
                    os.unlink(self.lock_path)
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None


def make_folders(folder: Path) -> tuple[Path, ...]:
    """Create `folder` and its missing parents; the ones this call created, deepest first
    (one another process created meanwhile is not counted: never remove what is not ours)."""
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    made = []
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path)
            made.append(path)
    return tuple(reversed(made))


def remove_empty_folders(made: tuple[Path, ...]) -> None:
    """Remove the folders a run made, deepest first, stopping at the first one not empty
    (something else, or another run, uses it)."""
    for folder in made:
        try:
            os.rmdir(folder)
        except OSError:
            return


def remove_work_dir(work_dir: Path, tries: int = 5) -> None:
    """Remove an unfinished run's hidden folder. An interrupt bounds how long the run waits
    for its threads, so a writer may still be finishing a file while the folder is removed
    (rmtree then leaves the folder it could not empty): retry briefly, so nothing partial is
    left behind; what still remains after that, the next run removes."""
    for attempt in range(tries):
        shutil.rmtree(work_dir, ignore_errors=True)
        if not work_dir.exists():
            return
        time.sleep(0.05 * (attempt + 1))


def open_lock_file(path: Path) -> int:
    """An fd on the lock file at `path`, created if missing with its folder's group and
    permissions. Another user's lock file left by a killed run (the lab's folders are
    shared) is opened read-only: `flock` needs no write access."""
    flags = os.O_CREAT | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags | os.O_RDWR, 0o644)
    except PermissionError:
        if not os.path.isfile(path):
            raise
        fd = os.open(path, flags | os.O_RDONLY)
    if os.fstat(fd).st_uid == os.geteuid():
        follow_folder(fd, path.parent)
    return fd


def is_linked_at(fd: int, path: Path) -> bool:
    """True when `fd` is the file now at `path` (not one removed or replaced since, nor a
    link put there to it)."""
    try:
        here = os.lstat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)


def output_error(path: Path, exc: OSError) -> OutputError:
    if exc.errno == errno.ENOSPC:
        return OutputError(f"{path}: disk full while writing outputs; free space and rerun")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"{path}: output folder is not writable; choose another --out")
    return OutputError(f"{path}: cannot write outputs: {exc}")
