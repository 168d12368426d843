"""A lab's output folder shared by real users: what one writes beside the outputs, the others
read and replace; what is wrong is said in words that name the folder, its owner and mode."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from tests.lab_users import LabUsers, lab_folder, lab_users  # noqa: F401
from wsi_segment.pipeline.outputs.failure_record import record_path

RECORD = {
    "fingerprint": "f" * 64,
    "since_utc": "2026-11-23T02:00:41Z",
    "failed_utc": "2026-11-24T02:00:12Z",
    "error_class": "SlideError",
    "message": "x.svs: not a readable slide",
}


def write_as(users: LabUsers, user: str, out: Path, record: dict[str, str]) -> str:
    """write_record run by `user`; its result ('None' when written)."""
    done = users.python(
        user,
        "import json, sys\n"
        "from wsi_segment.pipeline.outputs.failure_record import write_record\n"
        f"print(write_record({str(out)!r}, 'case-1', json.loads({json.dumps(record)!r})))",
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def read_as(users: LabUsers, user: str, out: Path) -> str:
    done = users.python(
        user,
        "from wsi_segment.pipeline.outputs.failure_record import read_record, clear_record\n"
        f"r = read_record({str(out)!r}, 'case-1')\n"
        "print(r and r['failed_utc'])\n"
        f"print(clear_record({str(out)!r}, 'case-1'))",
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_record_written_by_one_lab_user_is_read_replaced_and_cleared_by_another(
    lab_users: LabUsers,  # noqa: F811
) -> None:
    out = lab_folder(lab_users.root / "out", lab_users.service)  # setgid, group-writable
    assert write_as(lab_users, lab_users.admin, out, RECORD) == "None"
    path = record_path(out, "case-1")
    st = path.stat()
    # the folder's group and permissions: group rw (the folder is g+w), others r, no o+w
    assert stat.S_IMODE(st.st_mode) == 0o664
    assert st.st_gid == out.stat().st_gid
    # the service user replaces it (same fingerprint, a later failure), then the admin reads it
    later = {**RECORD, "failed_utc": "2026-11-25T02:00:00Z"}
    assert write_as(lab_users, lab_users.service, out, later) == "None"
    assert read_as(lab_users, lab_users.admin, out) == "2026-11-25T02:00:00Z\nTrue\n"
    assert not path.exists()


def test_a_private_folder_keeps_records_private(lab_users: LabUsers) -> None:  # noqa: F811
    out = lab_folder(lab_users.root / "out", lab_users.admin, mode=0o700)
    assert write_as(lab_users, lab_users.admin, out, RECORD) == "None"
    assert stat.S_IMODE(record_path(out, "case-1").stat().st_mode) == 0o600


def test_a_record_this_user_cannot_read_is_named_as_such(
    lab_users: LabUsers,  # noqa: F811
) -> None:
    out = lab_folder(lab_users.root / "out", lab_users.service)
    assert write_as(lab_users, lab_users.admin, out, RECORD) == "None"
    path = record_path(out, "case-1")
    path.chmod(0o600)  # as versions before this one wrote it
    problem = write_as(lab_users, lab_users.service, out, RECORD)
    assert problem == (
        f"{path} is in the way (it cannot be read by user {lab_users.service} "
        f"({lab_users.admin}:{lab_users.group}, mode 0600); let this user read it (e.g. chmod "
        "g+r) so it is used); left as it is"
    )
    assert json.loads(path.read_text())["failed_utc"] == RECORD["failed_utc"]  # untouched


def test_an_unwritable_parent_is_named_not_a_missing_file(
    lab_users: LabUsers,  # noqa: F811
) -> None:
    parent = lab_users.root / "results"
    parent.mkdir(mode=0o755)  # root's
    out = parent / "nightly"
    problem = write_as(lab_users, lab_users.service, out, RECORD)
    assert problem == (
        f"{out}/.case-1.failed.json: cannot write the failure record ({out} does not exist "
        f"and cannot be created: {parent} is not writable by user {lab_users.service} "
        "(root:root, mode 0755))"
    )
    assert list(parent.iterdir()) == []


def test_a_lock_file_left_by_another_user_does_not_block_the_next_run(
    lab_users: LabUsers,  # noqa: F811
) -> None:
    out = lab_folder(lab_users.root / "out", lab_users.service)
    lock = out / ".case-1.lock"
    done = lab_users.python(
        lab_users.admin,
        f"import os; os.close(os.open({str(lock)!r}, os.O_CREAT | os.O_WRONLY, 0o644))",
    )
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(lock.stat().st_mode) == 0o644  # what a killed older run left
    done = lab_users.python(
        lab_users.service,
        "from pathlib import Path\n"
        "from wsi_segment.pipeline.outputs.output_dir import OutputDir\n"
        f"with OutputDir(Path({str(out)!r}), 'case-1', overwrite=False) as o:\n"
        "    (o.work_dir / 'x').write_text('x')\n"
        "    o.commit()\n",
    )
    assert done.returncode == 0, done.stderr
    assert (out / "case-1" / "x").read_text() == "x"
    assert not lock.exists()  # the finishing run removed it


def test_a_partial_folder_another_users_killed_run_left(lab_users: LabUsers) -> None:  # noqa: F811
    """Left with the units' UMask=0002 it is removed by the next run of another member;
    left with a private umask, the run names it, its owner and what to do."""
    out = lab_folder(lab_users.root / "out", lab_users.service)
    enter = (
        "from pathlib import Path\n"
        "from wsi_segment.pipeline.outputs.output_dir import OutputDir\n"
        f"with OutputDir(Path({str(out)!r}), 'case-1', overwrite=False) as o:\n"
        "    o.commit()\n"
    )
    for umask, works in (("0002", True), ("0022", False)):
        killed = (  # what a run killed mid-slide leaves: a zarr folder with a chunk
            f"import os; os.umask(0o{umask})\n"
            f"p = {str(out)!r} + '/.case-1.partial/probabilities.ome.zarr/0'\n"
            "os.makedirs(p); open(p + '/0.0', 'w').close()\n"
        )
        assert lab_users.python(lab_users.admin, killed).returncode == 0
        done = lab_users.python(lab_users.service, enter)
        if works:
            assert done.returncode == 0, done.stderr
            assert (out / "case-1").is_dir() and not (out / ".case-1.partial").exists()
            (out / "case-1").rmdir()
        else:
            partial = out / ".case-1.partial"
            assert done.returncode == 1
            assert (
                f"OutputError: {partial} was left by a run that stopped, and user "
                f"{lab_users.service} may not remove it ({lab_users.admin}:{lab_users.group}, "
                "mode 2755; a file inside: "
            ) in done.stderr
            assert "UMask=0002" in done.stderr
            assert not (out / ".case-1.lock").exists()  # the lock was released and removed


OUR_SUMMARY = json.dumps(
    {"schema_version": 1, "fingerprint": "f", "output": {"files": ["probabilities.ome.zarr"]}}
)


def publish_as(users: LabUsers, user: str, out: Path, umask: str, overwrite: bool) -> str:
    """A run of `user` under `umask` that publishes an output of ours with a subfolder (as
    the zarr store is); its stderr ('' when it published)."""
    done = users.python(
        user,
        f"import os; os.umask(0o{umask})\n"
        "from pathlib import Path\n"
        "from wsi_segment.pipeline.outputs.output_dir import OutputDir\n"
        f"with OutputDir(Path({str(out)!r}), 'case-1', overwrite={overwrite}) as o:\n"
        "    (o.work_dir / 'probabilities.ome.zarr' / 'OME').mkdir(parents=True)\n"
        "    (o.work_dir / 'probabilities.ome.zarr' / 'OME' / '.zgroup').write_text('x')\n"
        f"    (o.work_dir / 'summary.json').write_text({OUR_SUMMARY!r})\n"
        "    o.commit()\n",
    )
    return done.stderr if done.returncode else ""


def test_a_members_outputs_are_replaced_by_the_service_whatever_the_members_umask(
    lab_users: LabUsers,  # noqa: F811
) -> None:
    """A member's trial run under umask 022 made its folders 2755: the service's --overwrite
    moved it aside, could not remove it, left `.case-1.old` without a word, and failed every
    later --overwrite of the slide after computing it. Folders now follow the lab folder."""
    out = lab_folder(lab_users.root / "out", lab_users.service)
    assert publish_as(lab_users, lab_users.admin, out, "0022", overwrite=False) == ""
    store = out / "case-1" / "probabilities.ome.zarr"
    for folder in (out / "case-1", store, store / "OME"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o2775, folder
    for _ in range(2):
        assert publish_as(lab_users, lab_users.service, out, "0002", overwrite=True) == ""
        assert sorted(p.name for p in out.iterdir()) == ["case-1"]  # no .old, no lock


def test_what_overwrite_cannot_remove_is_refused_before_any_work(
    lab_users: LabUsers,  # noqa: F811
) -> None:
    """An output (or a `.old` a replace left) made private by an earlier version or by hand:
    the run is refused when it starts, naming the folder, its owner and mode, and the fix."""
    out = lab_folder(lab_users.root / "out", lab_users.service)
    assert publish_as(lab_users, lab_users.admin, out, "0022", overwrite=False) == ""
    store = out / "case-1" / "probabilities.ome.zarr"
    store.chmod(0o2755)  # as an earlier version left it
    for leftover in (False, True):
        if leftover:  # the previous output a replace set aside and could not remove
            (out / "case-1").rename(out / ".case-1.old")
            store = out / ".case-1.old" / "probabilities.ome.zarr"
        error = publish_as(lab_users, lab_users.service, out, "0002", overwrite=True)
        name = ".case-1.old" if leftover else "case-1"
        what = "the previous output a replace set aside" if leftover else "the output --overwrite"
        assert f"OutputError: {out / name} ({what}" in error
        assert f"cannot be removed: user {lab_users.service} " in error
        assert f"may not remove what is in {store} ({lab_users.admin}:{lab_users.group}, " in error
        assert "mode 2755); remove it as its owner (or root)" in error
        assert (store / "OME" / ".zgroup").read_text() == "x"  # nothing of it removed
        assert sorted(p.name for p in out.iterdir()) == [name]  # no work folder, no lock


def test_a_members_output_under_umask_077_is_read_and_replaced_by_the_lab(
    lab_users: LabUsers,  # noqa: F811
) -> None:
    """A member whose login sets `umask 077` publishes: every file gets the lab folder's read
    bits and every folder its group and search bits (the files were 0600 until 2026-11-28, and
    the service's next run called the output "in the way and not a wsi-segment output")."""
    out = lab_folder(lab_users.root / "out", lab_users.service)
    assert publish_as(lab_users, lab_users.admin, out, "0077", overwrite=False) == ""
    output = out / "case-1"
    for path in (output, output / "probabilities.ome.zarr", output / "probabilities.ome.zarr/OME"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o2775, path
    for path in (output / "summary.json", output / "probabilities.ome.zarr/OME/.zgroup"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    read = lab_users.python(
        lab_users.service, f"print(open({str(output / 'summary.json')!r}).read())"
    )
    assert read.returncode == 0 and json.loads(read.stdout) == json.loads(OUR_SUMMARY)
    assert publish_as(lab_users, lab_users.service, out, "0002", overwrite=True) == ""
    assert sorted(p.name for p in out.iterdir()) == ["case-1"]


def test_an_output_whose_summary_this_user_cannot_read_is_named_so(
    lab_users: LabUsers,  # noqa: F811
) -> None:
    """A summary.json left 0600 by another member (an earlier version, or by hand) is named as
    unreadable by this user, with its owner, mode and the fix, not as someone else's folder,
    and nothing of it is touched; the report says "unreadable summary", not "damaged"."""
    out = lab_folder(lab_users.root / "out", lab_users.service)
    assert publish_as(lab_users, lab_users.admin, out, "0022", overwrite=False) == ""
    summary = out / "case-1" / "summary.json"
    summary.chmod(0o600)
    error = publish_as(lab_users, lab_users.service, out, "0002", overwrite=True)
    assert (
        f"OutputError: {summary}: it cannot be read by user {lab_users.service} "
        f"({lab_users.admin}:{lab_users.group}, mode 0600), so whether {out / 'case-1'} is a "
        "finished wsi-segment output cannot be told; nothing was changed: ask its owner to let "
        f"the lab read it (chmod -R g+rX {out / 'case-1'}), or choose another --out"
    ) in error
    assert json.loads(summary.read_text()) == json.loads(OUR_SUMMARY)  # untouched
    entry = lab_users.python(
        lab_users.service,
        "from wsi_segment.pipeline.outputs.slide_entries import scan_slides\n"
        f"print(*[(e.name, e.status) for e in scan_slides({str(out)!r}, {{}})])",
    )
    assert entry.stdout.strip() == "('case-1', 'unreadable summary')", entry.stderr


def test_an_output_with_a_folder_this_user_cannot_enter_is_named_so(
    lab_users: LabUsers,  # noqa: F811
) -> None:
    """A folder of it another member left 2700 (versions before share_tree, under umask 077):
    the output itself, or a folder in its zarr store. Until 2026-11-28 either was a
    PermissionError traceback (`Path.is_file`, `os.scandir`) and the report left the output
    out; now the folder is named as unreadable by this user, nothing of it is touched, and
    the report lists it as "unreadable summary"."""
    out = lab_folder(lab_users.root / "out", lab_users.service)
    assert publish_as(lab_users, lab_users.admin, out, "0022", overwrite=False) == ""
    output = out / "case-1"
    for private in (output / "probabilities.ome.zarr", output):
        private.chmod(0o2700)
        error = publish_as(lab_users, lab_users.service, out, "0002", overwrite=True)
        assert "Traceback" in error and "PermissionError" not in error, error  # an OutputError
        assert (
            f"OutputError: {private}: it cannot be read by user {lab_users.service} "
            f"({lab_users.admin}:{lab_users.group}, mode 2700), so whether {output} is a "
            "finished wsi-segment output cannot be told; nothing was changed: ask its owner to "
            f"let the lab read it (chmod -R g+rX {output}), or choose another --out"
        ) in error
        assert json.loads((output / "summary.json").read_text()) == json.loads(OUR_SUMMARY)
        assert sorted(p.name for p in out.iterdir()) == ["case-1"]  # no work folder, no lock
    entry = lab_users.python(
        lab_users.service,
        "from wsi_segment.pipeline.outputs.slide_entries import scan_slides\n"
        f"print(*[(e.name, e.status, e.reason) for e in scan_slides({str(out)!r}, {{}})])",
    )
    assert entry.stdout.strip() == str(
        (
            "case-1",
            "unreadable summary",
            f"{output}: it cannot be read by user {lab_users.service} ({lab_users.admin}:"
            f"{lab_users.group}, mode 2700); ask its owner to let the lab read it (chmod -R g+rX)",
        )
    ), entry.stderr
