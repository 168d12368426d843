"""Output folders shared by a lab: files that follow their folder, and errors that say who may not.

A nightly service user, an admin's trial run and an operator's `--retry-failed` all write the
same output folder. What one of them writes beside the outputs (a failure record, a lock
file) must be readable and replaceable by the others wherever the folder allows it, so a
file gets its folder's group (as a setgid folder gives it by itself) and the folder's group
and other read bits, and group write where the folder is group-writable. Nothing is made
writable by others. When a folder is not writable, the message names the folder that is not
(the nearest one that exists: an output folder that cannot be created is a parent's problem),
its owner and mode, and the user the run is.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import stat
from pathlib import Path

from wsi_segment.errors import OutputError
from wsi_segment.wsi.shown_path import not_utf8, utf8_shown

OWNER_RW = stat.S_IRUSR | stat.S_IWUSR


def file_mode_for(folder: str | Path) -> int:
    """The mode of a file we write in `folder`: owner rw; group r (w) where the folder is
    group-readable (-writable); others r where the folder is other-readable; never o+w."""
    mode = os.stat(folder).st_mode
    bits = OWNER_RW
    if mode & stat.S_IRGRP:
        bits |= stat.S_IRGRP
    if mode & stat.S_IWGRP:
        bits |= stat.S_IWGRP
    if mode & stat.S_IROTH:
        bits |= stat.S_IROTH
    return bits


def follow_folder(fd: int, folder: str | Path) -> None:
    """Give the file open at `fd` (ours) the group and permissions its folder implies.

    A setgid folder already gave it the folder's group; elsewhere it takes the folder's group
    when this user is a member of it (as `chgrp` would allow), else keeps the user's own.
    Failures leave the file as created: access is a convenience, never a reason to fail.
    """
    with contextlib.suppress(OSError):
        folder_gid = os.stat(folder).st_gid
        if os.fstat(fd).st_gid != folder_gid and (
            os.geteuid() == 0 or folder_gid in os.getgroups() or folder_gid == os.getegid()
        ):
            os.fchown(fd, -1, folder_gid)
    with contextlib.suppress(OSError):
        os.fchmod(fd, file_mode_for(folder))


def share_tree(tree: Path, folder: str | Path) -> None:
    """Give `tree` and every folder in it `folder`'s group (as `follow_folder` does), the
    group read, write and search bits `folder` has (others' read and search where it has
    others' read), and every file in it the read bits `folder` has (group, others): in a
    lab's group-writable output folder, another member's `--overwrite` can then remove what
    this run wrote (removing needs write on each folder, not on the files), and every member
    reads it, whatever this user's umask (under `umask 077` the zarr chunks and summary.json
    were 0600: the next member's run found an unreadable output). Bits are only added, links
    never followed; failures leave it as is."""
    with contextlib.suppress(OSError):
        st = os.stat(folder)
        group_bits = st.st_mode & (stat.S_IRGRP | stat.S_IWGRP)
        group_bits |= stat.S_IXGRP if group_bits & stat.S_IRGRP else 0
        group_bits |= stat.S_IROTH | stat.S_IXOTH if st.st_mode & stat.S_IROTH else 0
        read_bits = st.st_mode & (stat.S_IRGRP | stat.S_IROTH)
        chgrp = st.st_gid in (*os.getgroups(), os.getegid()) or os.geteuid() == 0
        for top, dirs, files in os.walk(tree):
            gid = st.st_gid if chgrp else None
            if Path(top) == tree:
                _share(tree, stat.S_IFDIR, group_bits, gid)
            for name in dirs:
                _share(Path(top) / name, stat.S_IFDIR, group_bits, gid)
            for name in files:
                _share(Path(top) / name, stat.S_IFREG, read_bits, gid)


def _share(path: Path, kind: int, bits: int, gid: int | None) -> None:
    """Add `bits` to `path` and give it group `gid` (None: keep), if it is a `kind` (a
    folder or a regular file, never a link os.walk listed) and needs it."""
    with contextlib.suppress(OSError):
        here = os.lstat(path)
        if stat.S_IFMT(here.st_mode) != kind:
            return
        if gid is not None and here.st_gid != gid:
            os.chown(path, -1, gid, follow_symlinks=False)
        mode = stat.S_IMODE(os.lstat(path).st_mode)  # chown may clear setgid: read it again
        if mode | bits != mode:
            os.chmod(path, mode | bits)


def unremovable_folder(tree: Path) -> Path | None:
    """The first folder of `tree` (itself included) whose entries this user may not remove
    (no write or search permission on it), or None: what `--overwrite` must remove."""
    return _first_folder_without(tree, os.W_OK | os.X_OK)


def unreadable_folder(tree: Path) -> Path | None:
    """The first folder of `tree` (itself included) this user may not list or enter (no
    read or search permission on it), or None: what telling whether `tree` is ours reads."""
    return _first_folder_without(tree, os.R_OK | os.X_OK)


def _first_folder_without(tree: Path, access: int) -> Path | None:
    if not os.access(tree, access):
        return tree
    for top, dirs, _ in os.walk(tree):
        for name in dirs:
            path = Path(top) / name
            if not path.is_symlink() and not os.access(path, access):
                return path
    return None


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def describe(path: str | Path) -> str:
    """`owner:group, mode 0NNN` of `path` (its link, not a target), or '' when it is gone."""
    try:
        st = os.lstat(path)
    except OSError:
        return ""
    return f"{user_name(st.st_uid)}:{group_name(st.st_gid)}, mode {stat.S_IMODE(st.st_mode):04o}"


def nearest_existing(path: str | Path) -> Path:
    """`path` itself, or the nearest folder above it that exists."""
    here = Path(os.path.abspath(path))
    while not os.path.lexists(here) and here != here.parent:
        here = here.parent
    return here


def this_user() -> str:
    return user_name(os.geteuid())


def unwritable_folder(folder: str | Path, exc: OSError) -> str:
    """What is wrong when creating or writing in `folder` failed with `exc`: for a
    permission error or a missing folder, which folder (the nearest that exists) this user
    may not write, with its owner and mode; otherwise the system's words."""
    target = Path(os.path.abspath(folder))
    blocker = nearest_existing(target)
    missing_below_writable = exc.errno == errno.ENOENT and (
        blocker == target or os.access(blocker, os.W_OK | os.X_OK)
    )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.ENOENT) and not missing_below_writable:
        who = f"is not writable by user {this_user()} ({describe(blocker)})"
        if blocker == target:
            return f"{folder} {who}"
        return f"{folder} does not exist and cannot be created: {blocker} {who}"
    if exc.errno == errno.EROFS:
        return f"{folder} is on a read-only file system"
    return f"{folder}: {exc.strerror or exc}"


def unwritable_outputs(out_root: str | Path, exc: OSError) -> OutputError:
    """The error of a run that cannot create or write its output folder `out_root`."""
    return OutputError(
        f"cannot write outputs: {unwritable_folder(out_root, exc)}; "
        "choose a writable folder with --out"
    )


def refuse_unusable_root(out_root: str | Path) -> None:
    """Before any work: the `unwritable_outputs` error when this user could not create or
    write `out_root` (asked of the nearest folder that exists, as the kernel would answer
    the run's own write, with its effective ids), so the run says so in a second instead of
    after loading its model. Nothing is created; the run's own writes still check. A path
    that is not UTF-8 is refused too: summary.json and cohort.csv record it."""
    if not_utf8(str(out_root)):
        raise OutputError(
            f"{utf8_shown(str(out_root))}: the output folder's path is not valid UTF-8 (a name "
            "written in another encoding, such as Latin-1), which summary.json and cohort.csv "
            "could not record; choose a folder whose path is UTF-8 with --out"
        )
    here = nearest_existing(out_root)
    if not here.is_dir():
        raise OutputError(
            f"cannot write outputs in {out_root}: {here} is not a folder; choose a folder "
            "with --out"
        )
    if os.access(here, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        return
    code = errno.EROFS if os.statvfs(here).f_flag & os.ST_RDONLY else errno.EACCES
    raise unwritable_outputs(out_root, OSError(code, os.strerror(code), str(here)))


def unreadable_file(path: str | Path) -> str | None:
    """Why this user cannot read the file at `path` (owner, mode, user), or None if it can."""
    if os.access(path, os.R_OK):
        return None
    return f"it cannot be read by user {this_user()} ({describe(path)})"
