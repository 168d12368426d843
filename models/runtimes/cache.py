"""A disk cache of compiled graphs that never trusts what it finds.

An entry is files `<name>.<suffix>` beside a manifest `<name>.json` holding the entry's key
(everything the result depends on) and each file's sha256; the name is a digest of the key.
A manifest that does not parse, names another key or does not match its files is a miss, and
the entry is built again. Files are renamed into place, manifest last, so a reader never sees
a half-written entry. The folder: `$WSI_SEGMENT_CACHE_DIR`, else `$XDG_CACHE_HOME/wsi-segment`,
else `~/.cache/wsi-segment`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path

from ..checksum import file_sha256

CACHE_ENV = "WSI_SEGMENT_CACHE_DIR"
ISA_CAP_VARIABLES = ("OV_CPU_MAX_ISA", "ONEDNN_MAX_CPU_ISA")  # narrow what the CPU plugin uses
_FORMAT = "wsi-segment-runtime-cache"
_VERSION = 1
_log = logging.getLogger(__name__)


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where compiled graphs are kept (see the module docstring)."""
    env = os.environ if environ is None else environ
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV])
    xdg = env.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path(env.get("HOME", str(Path.home()))) / ".cache"
    return base / "wsi-segment"


def cpu_key(cpu_flags: frozenset[str]) -> str:
    """A digest of the instruction sets a compiled result may use: the CPU's flags, narrowed
    by the caps a user can set (a capped run must not take what the whole CPU made)."""
    caps = [f"{k}={os.environ.get(k, '')}" for k in ISA_CAP_VARIABLES]
    cpu = " ".join([*sorted(cpu_flags), *caps])
    return hashlib.sha256(cpu.encode()).hexdigest()[:16]


def entry_name(key: Mapping[str, object]) -> str:
    """The file name stem of the entry for `key` (a digest of its canonical JSON)."""
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@contextlib.contextmanager
def entry_lock(root: Path, key: Mapping[str, object]) -> Iterator[None]:
    """Held while the entry for `key` is looked up and, where missing, built, so processes
    and threads needing it at once (a batch's slides, Dask workers) build it once. Where no
    lock file can be made, nothing is locked; the kernel releases a dead process's lock."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / f".{entry_name(key)}.lock", os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def load_entry(root: Path, key: Mapping[str, object], suffixes: tuple[str, ...]) -> dict[str, Path]:
    """{suffix: path} of the entry for `key` when it is whole and is `key`'s, else {}."""
    name = entry_name(key)
    try:
        manifest = json.loads((root / f"{name}.json").read_text())
        if (
            manifest.get("format") != _FORMAT
            or manifest.get("version") != _VERSION
            or manifest.get("key") != json.loads(json.dumps(key))
        ):
            return {}
        files = {s: root / f"{name}.{s}" for s in suffixes}
        if any(manifest["sha256"].get(s) != file_sha256(p) for s, p in files.items()):
            return {}
        return files
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def store_best_effort(
    root: Path, key: Mapping[str, object], write: Callable[[Path], Mapping[str, Path]]
) -> None:
    """Store the entry for `key` whose files `write` builds ({suffix: path}) in a scratch
    folder inside `root` (same file system: renames are atomic); a cache that cannot be
    written (read-only home, full disk) only costs the next run a rebuild."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    except OSError as exc:
        _log.info("runtime cache %s not writable (%s): not cached", root, exc)
        return
    try:
        files = write(scratch)
        name = entry_name(key)
        sums = {s: file_sha256(p) for s, p in files.items()}
        for s, path in files.items():
            os.replace(path, root / f"{name}.{s}")
        manifest = {"format": _FORMAT, "version": _VERSION, "key": key, "sha256": sums}
        # written as any file is (0666 less the umask), never mkstemp's 0600: a lab's group
        # shares one cache, and an entry only its writer can read is rebuilt by every other
        tmp = scratch / f"{name}.json"
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(tmp, root / f"{name}.json")
    except OSError as exc:
        _log.info("runtime cache %s not written (%s): not cached", root, exc)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def package_version(package: str) -> str:
    """An installed package's version without its local part ("2.14.1+cu130" -> "2.14.1"),
    read from its metadata (torch's without importing torch); "" where it is not installed."""
    try:
        return metadata.version(package).split("+")[0]
    except metadata.PackageNotFoundError:
        return ""
