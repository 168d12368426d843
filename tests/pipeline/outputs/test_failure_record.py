"""The failure record file: written whole, read only when ours, never replacing or removing
a file or link that is not ours."""

from __future__ import annotations

import json
import os
from pathlib import Path

from wsi_segment.pipeline.outputs.failure_record import (
    RECORD_KIND,
    SCHEMA_VERSION,
    clear_record,
    read_record,
    record_path,
    write_record,
)

RECORD = {
    "fingerprint": "f" * 64,
    "since_utc": "2026-11-23T02:00:41Z",
    "failed_utc": "2026-11-24T02:00:12Z",
    "error_class": "SlideError",
    "message": "x.svs: not a readable slide",
}


def test_write_then_read_back_exactly(tmp_path: Path) -> None:
    assert write_record(tmp_path, "case-1", RECORD) is None
    path = record_path(tmp_path, "case-1")
    assert path == tmp_path / ".case-1.failed.json"
    data = json.loads(path.read_text())
    assert data == {"kind": RECORD_KIND, "schema_version": SCHEMA_VERSION, **RECORD}
    assert read_record(tmp_path, "case-1") == data
    # written through a temporary file renamed into place: nothing else is left
    assert sorted(p.name for p in tmp_path.iterdir()) == [".case-1.failed.json"]
    # ours: replaced by the next record, removed on request
    assert (
        write_record(tmp_path, "case-1", {**RECORD, "failed_utc": "2026-11-25T02:00:00Z"}) is None
    )
    again = read_record(tmp_path, "case-1")
    assert again is not None and again["failed_utc"] == "2026-11-25T02:00:00Z"
    assert clear_record(tmp_path, "case-1") is True
    assert list(tmp_path.iterdir()) == []
    assert clear_record(tmp_path, "case-1") is False  # nothing there: nothing to do


def test_a_file_that_is_not_ours_is_never_replaced_or_removed(tmp_path: Path) -> None:
    path = record_path(tmp_path, "case-1")
    for content in (
        "my notes\n",  # not JSON
        json.dumps({"fingerprint": "f" * 64}),  # JSON, not our kind
        json.dumps({**RECORD, "kind": RECORD_KIND}),  # no schema version
        json.dumps({"kind": RECORD_KIND, "schema_version": 1, "fingerprint": "f"}),  # partial
    ):
        path.write_text(content)
        assert read_record(tmp_path, "case-1") is None
        problem = write_record(tmp_path, "case-1", RECORD)
        why = "it is not a failure record wsi-segment wrote"
        assert problem == f"{path} is in the way ({why}); left as it is"
        assert clear_record(tmp_path, "case-1") is False
        assert path.read_text() == content
        assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left
    path.unlink()
    path.mkdir()  # a folder of that name
    assert write_record(tmp_path, "case-1", RECORD) is not None
    assert clear_record(tmp_path, "case-1") is False and path.is_dir()


def test_links_are_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    assert write_record(tmp_path, "real", RECORD) is None
    os.replace(record_path(tmp_path, "real"), target)  # a record of ours, reached by a link
    link = record_path(tmp_path, "case-1")
    link.symlink_to(target)
    before = target.read_bytes()
    assert read_record(tmp_path, "case-1") is None
    problem = write_record(tmp_path, "case-1", {**RECORD, "message": "other"})
    assert problem == f"{link} is in the way (it is a symbolic link); left as it is"
    assert clear_record(tmp_path, "case-1") is False
    assert link.is_symlink() and target.read_bytes() == before
    dangling = record_path(tmp_path, "case-2")
    dangling.symlink_to(tmp_path / "nowhere.json")
    assert write_record(tmp_path, "case-2", RECORD) is not None
    assert not (tmp_path / "nowhere.json").exists() and dangling.is_symlink()


def test_a_missing_folder_is_made_and_an_unwritable_one_reported_not_raised(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "new" / "out"  # no slide got as far as making it: the record does
    assert write_record(missing, "case-1", RECORD) is None
    assert read_record(missing, "case-1") is not None
    blocker = tmp_path / "not-a-folder"  # below a file: not writable, root included
    blocker.write_text("x")
    problem = write_record(blocker / "out", "case-1", RECORD)
    assert problem == (
        f"{record_path(blocker / 'out', 'case-1')}: cannot write the failure record "
        f"({blocker / 'out'}: Not a directory)"
    )
    assert blocker.read_text() == "x"
