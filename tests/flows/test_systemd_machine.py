"""tests/systemd_machine.py boots wherever the checkout is: a folder under /tmp (which the
machine replaces with its own tmpfs) or on another file system appears at its destination,
copy-on-write, with the test's files over it; the real folder is never written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.systemd_machine import boot

pytestmark = pytest.mark.timeout(120)  # a boot takes about a second here


def test_a_checkout_under_tmp_is_bound_copy_on_write(tmp_path: Path) -> None:
    repo = tmp_path / "checkout"  # pytest's tmp_path: under /tmp
    repo.mkdir()
    (repo / "x.txt").write_text("orig\n")
    (repo / "y.txt").write_text("keep\n")
    machine = boot(tmp_path / "m", {"/opt/co/x.txt": b"over\n"}, {str(repo): "/opt/co"})
    try:
        seen = machine.sh("cat /opt/co/x.txt /opt/co/y.txt && echo new > /opt/co/z.txt").stdout
    finally:
        machine.shutdown()
    assert seen == "over\nkeep\n"
    assert sorted(p.name for p in repo.iterdir()) == ["x.txt", "y.txt"]
    assert (repo / "x.txt").read_text() == "orig\n"
