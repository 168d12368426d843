"""What a local slide path leads to: the regular file a backend opens, or one clear error.

Kept apart from opening: a missing file, a broken link, a permission, a DICOM folder and a pipe
each need a different fix, and none of them should reach a backend (a FIFO would block it
forever; an unreadable file would be called corrupt).
"""

from __future__ import annotations

import errno
import os
from functools import partial
from pathlib import Path
from typing import Any

from wsi_segment.errors import ConfigError, SlideError
from wsi_segment.wsi.retries import with_retries
from wsi_segment.wsi.shown_path import is_remote_url, shown_slide_path, url_password
from wsi_segment.wsi.slide_folder import slide_file_of_folder


def local_slide_file(path: str) -> str:
    """The resolved regular file `path` names (a DICOM slide folder: one of its files), which
    this user may read."""
    try:  # a network share's hiccup (EIO, ESTALE) is retried as the backends' reads are
        with_retries(partial(os.stat, path), f"looking up {path}")
    except OSError as exc:
        raise _unreachable(path, exc) from None
    p = Path(path)
    if p.is_dir():  # a DICOM slide folder opens by one of its files
        p = Path(slide_file_of_folder(p))
    if not p.is_file():  # a FIFO would block the readers forever
        raise SlideError(
            f"{path}: not a regular file (a pipe, socket or device); pass the slide file"
        )
    try:
        with open(p, "rb"):  # a backend would call an unreadable file corrupt
            pass
    except PermissionError as exc:
        raise _unreachable(path, exc) from None
    except OSError:
        pass  # anything else: the backends' opens retry or word it
    return str(p.resolve())


def _unreachable(path: str, exc: OSError) -> SlideError:
    """The error for a local slide path this process cannot stat or open, with its fix: a
    missing file, a broken link, a loop and a permission each need a different one."""
    if exc.errno == errno.ELOOP:
        return SlideError(
            f"{path}: symbolic link loop (the link leads back to itself); point the link at "
            "the slide file, or pass the slide file itself"
        )
    if exc.errno in (errno.ENOENT, errno.ENOTDIR) and os.path.islink(path):
        return SlideError(
            f"{path}: symbolic link to {os.readlink(path)!r}, which does not exist; point the "
            "link at the slide file, or pass the slide file itself"
        )
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return SlideError(
            f"{path}: no such file; check the path (give a slide file, or a URL such as "
            "s3://bucket/slide.svs)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return SlideError(
            f"{path}: permission denied (user {_user()} may not read it, or a folder on its "
            "path); ask its owner for read access (and search access to its folders), or run "
            "as a user who has it"
        )
    if exc.errno == errno.ENAMETOOLONG:
        return SlideError(f"{path}: file name too long for the file system; check the path")
    return SlideError(f"{path}: cannot be read ({exc.strerror}); check the path and its disk")


def _user() -> str:
    """This process's user name (its uid where it has none)."""
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def absolute_slide_path(slide_path: str) -> str:
    """`slide_path` as every process and every later reader can find it: absolute for a
    local file (not resolved: a DICOM slide folder stays the folder), a URL as is. What
    Dask workers open, and what summary.json records (a relative path means nothing
    without the directory the run was started in)."""
    if is_remote_url(slide_path):
        return slide_path
    return os.path.abspath(slide_path.removeprefix("file://"))


# What a store says of an object that changes when the object is replaced under the same
# URL: its size and, where the store gives them, its ETag, modification time and version
# (fsspec's `info`: S3 gives ETag and LastModified, an HTTP server its headers).
REMOTE_FACTS = ("size", "ETag", "LastModified", "Last-Modified", "mtime", "VersionId")


# An HTTP store that stops answering (a server hung mid-night) held a read for aiohttp's
# 300 s a request, retried, and a run could not be stopped meanwhile: a connection gets
# CONNECT_S, and a read that receives nothing for READ_IDLE_S fails (and is retried as any
# transient error). Generous for a slow link: fsspec reads 5 MB blocks.
CONNECT_S, READ_IDLE_S = 30.0, 60.0


def is_http_url(path: str) -> bool:
    """A slide served over http(s) (fsspec's HTTP file system, aiohttp underneath)."""
    return path.lower().startswith(("http://", "https://"))


def url_storage_options(url: str) -> dict[str, Any]:
    """fsspec's options for the store of `url`: for http(s), the timeouts above."""
    if not is_http_url(url):
        return {}
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_S, sock_read=READ_IDLE_S)
    return {"client_kwargs": {"timeout": timeout}}


def remote_object_facts(url: str) -> dict[str, str]:
    """The `REMOTE_FACTS` the store of `url` gives now; {} when it cannot be asked (the slide's
    open, which follows, says why). A slide replaced under its URL was taken for the one
    already segmented ("up to date") while only the URL was compared."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url, **url_storage_options(url))
        info = fs.info(path)
    except Exception:
        return {}
    return {key: str(info[key]) for key in REMOTE_FACTS if info.get(key) is not None}


def refuse_url_password(slide_path: str) -> None:
    """ConfigError for a URL that carries a password (`https://user:secret@host/x.svs`): a
    command line is readable by every user of the machine (`ps`). Named as shown
    (`shown_slide_path`: the password as `***`)."""
    if not is_remote_url(slide_path) or url_password(slide_path) is None:
        return
    raise ConfigError(
        f"{shown_slide_path(slide_path)}: the URL holds a password, which any user of this "
        "machine could read from the command line; give the store its credentials where "
        "fsspec reads them (for s3://: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or "
        "~/.aws/credentials), or use a presigned URL"
    )
