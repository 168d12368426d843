"""A slide's output folder: one plain folder inside --out, named before anything is read;
"up to date" decided by the run's identity; and it appears all at once, never half-written,
one run at a time; a run that ends (done or failed) leaves no lock file, without ever
letting two runs in at once."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from wsi_segment.errors import ConfigError, OutputError
from wsi_segment.models.meta import ModelMeta
from wsi_segment.pipeline.outputs.output_dir import (
    OutputDir,
    is_linked_at,
    read_previous_summary,
)
from wsi_segment.pipeline.outputs.output_name import (
    check_output_name,
    default_output_name,
    slide_output_name,
)
from wsi_segment.pipeline.outputs.run_identity import run_fingerprint, slide_identity
from wsi_segment.pipeline.params import SegmentParams


def _siblings(parent):
    return sorted(p.name for p in parent.iterdir())


def test_outputs_appear_on_commit_only(tmp_path):
    root = tmp_path / "out"
    with OutputDir(root, "slide", overwrite=False) as out:
        (out.work_dir / "summary.json").write_text('{"fingerprint": "x"}')
        assert not (root / "slide").exists()  # nothing visible while writing
        out.commit()
    assert _siblings(root) == ["slide"]
    assert read_previous_summary(root / "slide") == {"fingerprint": "x"}


def test_error_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), OutputDir(tmp_path, "slide", False) as out:
        (out.work_dir / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")
    assert _siblings(tmp_path) == []


OURS = '{"schema_version": 1, "fingerprint": "f", "output": {"files": ["summary.json"]}}'


def test_a_failed_run_removes_the_out_folders_it_made_and_only_those(tmp_path):
    root = tmp_path / "lab" / "new" / "out"
    with pytest.raises(RuntimeError), OutputDir(root, "slide", False):
        raise RuntimeError("boom")
    assert _siblings(tmp_path) == []  # lab/new/out were all made by the run
    (tmp_path / "lab").mkdir()
    with pytest.raises(RuntimeError), OutputDir(root, "slide", False):
        (tmp_path / "lab" / "new" / "notes.txt").write_text("someone's")  # during the run
        raise RuntimeError("boom")
    assert _siblings(tmp_path / "lab" / "new") == ["notes.txt"]  # out went, the rest stays
    with OutputDir(root, "slide", False) as out:
        (out.work_dir / "summary.json").write_text(OURS)
        out.commit()
    assert _siblings(root) == ["slide"]  # a finished run keeps its folders


def test_a_refused_run_removes_the_out_folders_it_made(tmp_path):
    """Refused while it starts (its lock or work folder cannot be made: a name too long for
    them), a run leaves no --out of its own behind either."""
    root = tmp_path / "new" / "out"
    for name in ("x" * 247, "y" * 252):  # too long for .<name>.partial / .<name>.lock
        with pytest.raises(OutputError):
            OutputDir(root, name, False).__enter__()
        assert _siblings(tmp_path) == []


def test_runs_into_a_new_out_never_lose_it_to_another_runs_cleanup(tmp_path):
    """Runs (threads here) making --out, failing and removing it again as fast as they can:
    one that finds the folder gone between making it and locking there makes it again, so
    none fails for it. What a run made and another then used is left to that run, which
    removes only what it made itself: at most empty folders remain, never a file."""
    root = tmp_path / "new" / "out"
    errors: list[BaseException] = []
    entered = [0]

    def worker(name: str) -> None:
        for _ in range(200):
            try:
                with OutputDir(root, name, False) as out:
                    assert out.work_dir.is_dir()
                    entered[0] += 1
            except BaseException as exc:  # collected for the assertion
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"slide{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert entered[0] == 800
    assert not root.exists() or _siblings(root) == []
    assert [p for p in tmp_path.rglob("*") if not p.is_dir()] == []


def test_overwrite_replaces_and_failure_keeps_old(tmp_path):
    final = tmp_path / "slide"
    final.mkdir()
    (final / "summary.json").write_text(OURS)
    with (
        pytest.raises(OutputError, match="--overwrite"),
        OutputDir(tmp_path, "slide", False) as out,
    ):
        out.commit()
    with pytest.raises(KeyboardInterrupt), OutputDir(tmp_path, "slide", True) as out:
        (out.work_dir / "new.txt").write_text("new")
        raise KeyboardInterrupt
    assert _siblings(final) == ["summary.json"] and _siblings(tmp_path) == ["slide"]
    with OutputDir(tmp_path, "slide", True) as out:
        (out.work_dir / "summary.json").write_text(OURS)
        out.commit()
    assert _siblings(final) == ["summary.json"] and _siblings(tmp_path) == ["slide"]
    with OutputDir(tmp_path, "slide", True) as out:  # our own output is replaceable again
        (out.work_dir / "new.txt").write_text("new")
        out.commit()
    assert _siblings(final) == ["new.txt"] and _siblings(tmp_path) == ["slide"]


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    with OutputDir(tmp_path, "slide", False) as first:
        with pytest.raises(OutputError, match="another wsi-segment run"):
            OutputDir(tmp_path, "slide", False).__enter__()
        assert first.work_dir.is_dir()  # the refused run did not touch the first's work
    with OutputDir(tmp_path, "slide", False):  # released: the next run proceeds
        pass


def test_partial_folder_of_a_killed_run_is_discarded(tmp_path):
    stale = tmp_path / ".slide.partial"
    stale.mkdir()
    (stale / "half.bin").write_bytes(b"x")
    with OutputDir(tmp_path, "slide", False) as out:
        assert list(out.work_dir.iterdir()) == []


WRITER = """
import os, sys, time
work, started = sys.argv[1], sys.argv[2]
end = None  # 0.3 s past its 500th write, however slowly it got there
i = 0
while end is None or time.monotonic() < end:  # a writer finishing chunks, in folders of their own
    if i == 500:
        open(started, "w").close()
        end = time.monotonic() + 0.3
    try:
        os.mkdir(os.path.join(work, f"c{i % 50}"))  # never the hidden folder itself
    except OSError:
        pass
    try:
        with open(os.path.join(work, f"c{i % 50}", str(i)), "wb") as f:
            f.write(b"x")
    except OSError:
        pass
    i += 1
"""


def test_an_unfinished_runs_folder_goes_while_a_writer_is_still_finishing(tmp_path):
    """An interrupt bounds the wait for writer threads, so one may still write while the
    hidden folder is removed (a single rmtree then leaves the folder): it is retried."""
    started = tmp_path / "started"
    with pytest.raises(KeyboardInterrupt), OutputDir(tmp_path / "out", "slide", False) as out:
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(out.work_dir), str(started)])
        while not started.exists():
            assert writer.poll() is None, "the writer ended before its 500th write"
            time.sleep(0.005)
        raise KeyboardInterrupt
    assert writer.wait(timeout=30) == 0
    assert not (tmp_path / "out").exists()  # made by this run, so removed with it


def test_unwritable_parent(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")  # a file where the output root should be
    with pytest.raises(OutputError, match="writable"), OutputDir(blocker / "o", "s", False):
        pass


def test_no_lock_file_is_left_when_a_run_ends(tmp_path):
    with OutputDir(tmp_path, "done", False) as out:
        assert out.lock_path.is_file()  # held while the run works
        (out.work_dir / "summary.json").write_text(OURS)
        out.commit()
    with pytest.raises(RuntimeError), OutputDir(tmp_path, "failed", False):
        raise RuntimeError("boom")
    with pytest.raises(OutputError, match="--overwrite"), OutputDir(tmp_path, "done", False):
        pass  # refused up front: the finished folder exists
    assert _siblings(tmp_path) == ["done"]


def test_a_refused_run_leaves_the_holders_lock_alone(tmp_path):
    with OutputDir(tmp_path, "slide", False) as first:
        held = os.stat(first.lock_path).st_ino
        for _ in range(3):
            with pytest.raises(OutputError, match="another wsi-segment run"):
                OutputDir(tmp_path, "slide", False).__enter__()
        assert os.stat(first.lock_path).st_ino == held
        assert is_linked_at(first._lock_fd, first.lock_path)
    assert _siblings(tmp_path) == []


def test_a_lock_taken_on_a_removed_lock_file_is_not_trusted(tmp_path):
    """The race that removing lock files opens: a second run opens the lock file, the first
    run finishes (removes it, unlocks), the second's flock then succeeds on the removed file
    while a third run creates and locks a new one. The second must see it holds nothing."""
    first = OutputDir(tmp_path, "slide", False).__enter__()
    second_fd = os.open(first.lock_path, os.O_RDWR)  # the second run's open...
    try:
        first.__exit__(None, None, None)  # ...then the first run ends
        fcntl.flock(second_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # succeeds: nobody holds it
        assert not is_linked_at(second_fd, first.lock_path)  # but the file is gone
        with OutputDir(tmp_path, "slide", False) as third:
            assert is_linked_at(third._lock_fd, third.lock_path)
            assert not is_linked_at(second_fd, third.lock_path)  # a new file, not ours
    finally:
        os.close(second_fd)


def test_runs_racing_for_one_output_never_hold_it_together(tmp_path):
    """Threads entering and leaving OutputDir as fast as they can (flock conflicts between
    separate opens in one process as between processes): never two inside at once. They race
    for 1.5 s and until more than 50 entries (a loaded machine runs fewer in 1.5 s), 60 s at
    most."""
    inside: list[int] = []
    overlaps: list[int] = []
    entered = [0]
    guard = threading.Lock()
    t0 = time.monotonic()

    def racing() -> bool:
        elapsed = time.monotonic() - t0
        return elapsed < 60 and (elapsed < 1.5 or entered[0] <= 50)

    def worker() -> None:
        while racing():
            try:
                with OutputDir(tmp_path, "slide", False):
                    with guard:
                        inside.append(1)
                        entered[0] += 1
                        if len(inside) > 1:
                            overlaps.append(len(inside))
                    time.sleep(0)
                    with guard:
                        inside.pop()
            except OutputError:
                pass  # refused while another holds it: what a real second run does

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []
    assert entered[0] > 50  # the race was really run
    assert _siblings(tmp_path) == []


def test_output_names() -> None:
    assert default_output_name("/x/CMU-1.svs") == "CMU-1"
    assert default_output_name("/x/a.b.ome.tif") == "a.b"  # as QuPath strips it
    assert default_output_name("https://host/a/slide.svs/") == "slide"
    assert check_output_name(" case 1 ", "src") == "case 1"
    assert slide_output_name("/x/CMU-1.svs") == "CMU-1"
    assert slide_output_name("/x/CMU-1.svs", "case 1") == "case 1"
    assert slide_output_name("/x/a:b\\c.svs") == "a:b\\c"  # plain characters in a POSIX stem
    with pytest.raises(ConfigError, match="rename the slide file"):
        slide_output_name("/x/..svs")  # stem '.': the output folder itself
    with pytest.raises(ConfigError, match="point the URL at the slide file"):
        slide_output_name("https://host/a/..")
    for typed in ("../up", "/abs", "a\\b", "c:d", ".hidden", " "):
        with pytest.raises(ConfigError, match="not a plain folder name"):
            slide_output_name("/x/s.svs", typed)


def test_run_identity(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Same slide file + same model files + same output parameters = same fingerprint."""
    from wsi_segment.models.bundle import load_bundle

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    digests = [
        hashlib.sha256((model / n).read_bytes()).hexdigest()
        for n in ("model.json", "model.safetensors")
    ]
    expected = hashlib.sha256("".join(digests).encode()).hexdigest()
    assert load_bundle(model).identity == expected  # the formula of earlier releases
    unreachable = "http://127.0.0.1:9/s.svs"  # nothing listens: the URL alone
    assert slide_identity(unreachable) == {"url": unreachable}
    slide = tmp_path / "s.svs"
    slide.write_bytes(b"x")
    os.utime(slide, ns=(1, 1))
    assert slide_identity(f"file://{slide}") == {
        "path": str(slide.resolve()),
        "size": 1,
        "mtime_ns": 1,
    }
    dicom = tmp_path / "case-7"  # a DICOM slide folder: its files are the slide
    dicom.mkdir()
    (dicom / "level-0.dcm").write_bytes(b"abc")
    os.utime(dicom / "level-0.dcm", ns=(2, 2))
    before = slide_identity(str(dicom))
    assert before["files"] == [["level-0.dcm", 3, 2]]
    folder_mtime = dicom.stat().st_mtime_ns
    (dicom / "level-0.dcm").write_bytes(b"abd")  # rewritten in place: the folder looks the same
    assert dicom.stat().st_mtime_ns == folder_mtime and slide_identity(str(dicom)) != before
    meta = ModelMeta("m", ["A"], [(1, 2, 3)], mpp=1.0, tile_size=64)
    params = SegmentParams()
    first = run_fingerprint(str(slide), "h", params, meta)
    assert run_fingerprint(str(slide), "h", SegmentParams(threads=3), meta) == first
    assert run_fingerprint(str(slide), "other", params, meta) != first
    slide.write_bytes(b"xy")  # another slide at the same path
    assert run_fingerprint(str(slide), "h", params, meta) != first
