"""The runtime cache: an entry is used only when it is whole and is the key's own."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

from wsi_segment.models.runtimes.cache import (
    default_cache_dir,
    entry_lock,
    entry_name,
    load_entry,
    store_best_effort,
)

KEY = {"model": "abc", "openvino": "2026.4.1", "precision": "fp32", "threads": 2}


def _store(root: Path, key: dict[str, object], data: bytes) -> Path:
    """Store `data` as the entry's one file; the path it was stored at (the only blob)."""
    built: list[tuple[Path, int]] = []

    def write(scratch: Path) -> dict[str, Path]:
        (scratch / "x.blob").write_bytes(data)
        built.append((scratch, (scratch / "x.blob").stat().st_ino))
        return {"blob": scratch / "x.blob"}

    store_best_effort(root, key, write)
    [(scratch, inode)] = built
    [path] = root.glob("*.blob")
    assert path.stat().st_ino == inode  # the file moved out of the scratch folder
    assert not scratch.exists()  # which is removed
    return path


def test_a_stored_entry_loads_with_its_key_only(tmp_path: Path) -> None:
    path = _store(tmp_path, KEY, b"compiled")
    assert path == tmp_path / f"{entry_name(KEY)}.blob" and path.read_bytes() == b"compiled"
    assert load_entry(tmp_path, KEY, ("blob",)) == {"blob": path}
    for field, other in (("model", "abd"), ("precision", "bf16"), ("threads", 1)):
        changed = {**KEY, field: other}
        assert entry_name(changed) != entry_name(KEY)
        assert load_entry(tmp_path, changed, ("blob",)) == {}


def test_a_damaged_or_foreign_entry_is_a_miss_and_is_replaced(tmp_path: Path) -> None:
    path = _store(tmp_path, KEY, b"compiled")
    path.write_bytes(b"compiler")  # same size, one byte changed
    assert load_entry(tmp_path, KEY, ("blob",)) == {}
    path.write_bytes(b"compiled")
    manifest = tmp_path / f"{entry_name(KEY)}.json"
    doc = json.loads(manifest.read_text())
    doc["key"]["model"] = "another model"  # a foreign entry under this name
    manifest.write_text(json.dumps(doc))
    assert load_entry(tmp_path, KEY, ("blob",)) == {}
    manifest.write_text("{not json")
    assert load_entry(tmp_path, KEY, ("blob",)) == {}
    manifest.unlink()
    assert load_entry(tmp_path, KEY, ("blob",)) == {}
    _store(tmp_path, KEY, b"rebuilt")  # the rebuild replaces it
    assert load_entry(tmp_path, KEY, ("blob",)) == {"blob": path}
    assert path.read_bytes() == b"rebuilt"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, manifest.name])


def test_the_cache_folder_follows_xdg_and_can_be_overridden() -> None:
    home = {"HOME": "/home/u"}
    assert default_cache_dir(home) == Path("/home/u/.cache/wsi-segment")
    assert default_cache_dir({**home, "XDG_CACHE_HOME": "/x"}) == Path("/x/wsi-segment")
    env = {**home, "XDG_CACHE_HOME": "/x", "WSI_SEGMENT_CACHE_DIR": "/scratch/c"}
    assert default_cache_dir(env) == Path("/scratch/c")


def _build_once_locked(root: str, builds: str) -> bytes:
    """What a process does for an entry: look it up under the lock and, missing, build it
    (slowly, so that without the lock the other process would build it too)."""
    with entry_lock(Path(root), KEY):
        found = load_entry(Path(root), KEY, ("blob",))
        if not found:
            with open(builds, "a") as f:
                f.write("built\n")
            time.sleep(1.0)
            found = {"blob": _store(Path(root), KEY, b"compiled")}
    return found["blob"].read_bytes()


def test_processes_needing_one_entry_at_once_build_it_once(tmp_path: Path) -> None:
    """Two processes (a batch's slides, a machine's Dask workers) start on a missing entry
    together: one builds it, the other waits for it and loads what it built."""
    builds = tmp_path / "builds.txt"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        got = pool.starmap(_build_once_locked, [(str(tmp_path / "cache"), str(builds))] * 2)
    assert got == [b"compiled", b"compiled"]
    assert builds.read_text() == "built\n"


def test_a_folder_without_room_for_a_lock_is_used_unlocked(tmp_path: Path) -> None:
    """A cache folder that cannot be made (here: a file stands at its path) is not locked:
    the caller goes on and builds its own, as without a cache."""
    blocked = tmp_path / "file"
    blocked.write_text("")
    with entry_lock(blocked / "cache", KEY):
        assert not load_entry(blocked / "cache", KEY, ("blob",))


def test_entries_are_as_readable_as_the_umask_says(tmp_path: Path) -> None:
    """A lab's shared cache (a group folder, umask 002): the manifest was written 0600 by
    mkstemp, so every other member found no entry and rebuilt it, each run, unannounced."""
    import os

    before = os.umask(0o002)
    try:
        path = _store(tmp_path, KEY, b"compiled")
    finally:
        os.umask(before)
    manifest = tmp_path / f"{entry_name(KEY)}.json"
    assert oct(manifest.stat().st_mode & 0o777) == oct(0o664)
    assert oct(path.stat().st_mode & 0o777) == oct(0o664)
