"""A script that segments at module level, without `if __name__ == "__main__":`, would
segment again in every spawned decoder: it gets one ConfigError naming it and the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import DATA_DIR

# 1101 px at 0.227 um/px: a few of the 2 um/px model's tiles (the engine, not the slide, is
# the subject)
SLIDE = DATA_DIR / "OS-1-detail.ome.tif"

BODY = """
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.segment import segment_slide

def main():
    params = SegmentParams(
        model_dir={model!r}, device="cpu", runtime="torch", decoders=1, tissue="all"
    )
    print(segment_slide({slide!r}, {out!r}, params).status)
"""


@dataclass(frozen=True)
class Unguarded:
    """A run of the unguarded script: the script, its output folder, what the run gave."""

    script: Path
    out: Path
    done: subprocess.CompletedProcess[str]


def run_script(path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path.write_text(text)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, env=env, check=False
    )


@pytest.fixture(scope="module")
def unguarded(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Unguarded:
    """One run of a script that segments at module level, for both tests of it: it catches
    the ConfigError to list the model loads still running, then raises it again, so the
    script ends as an unguarded script does (the error uncaught, exit status 1)."""
    out = tmp_path_factory.mktemp("unguarded")
    body = BODY.format(model=str(tiny_model_dir), slide=str(SLIDE), out=str(out))
    caught = (
        "\nimport threading\nfrom wsi_segment.errors import ConfigError\ntry:\n    main()\n"
        "except ConfigError:\n"
        "    print([t.name for t in threading.enumerate() if t.name == 'load_for_process'])\n"
        "    raise\n"
    )
    script = out / "unguarded.py"
    return Unguarded(script, out, run_script(script, body + caught))


def test_a_script_without_main_guard_gets_one_config_error(unguarded: Unguarded) -> None:
    done, script = unguarded.done, unguarded.script
    assert done.returncode == 1
    assert "ConfigError" in done.stderr and str(script) in done.stderr
    assert 'if __name__ == "__main__":' in done.stderr and "decoders=0" in done.stderr
    assert not (unguarded.out / "OS-1-detail").exists()


def test_the_models_load_has_ended_when_the_error_is_raised(unguarded: Unguarded) -> None:
    """The error comes as the decoders would start, while the model loads in the background
    (importing torch): that load has ended first, so the script's exit never runs under it
    (an exit under a thread importing torch has crashed with SIGSEGV: here it ends with the
    error's status 1)."""
    done = unguarded.done
    assert done.returncode == 1, done.stderr
    assert done.stdout.split() == ["[]"]  # no load still running


def test_a_guarded_script_runs_the_engine(tmp_path, tiny_model_dir):
    body = BODY.format(model=str(tiny_model_dir), slide=str(SLIDE), out=str(tmp_path))
    done = run_script(tmp_path / "guarded.py", body + '\nif __name__ == "__main__":\n    main()\n')
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["done"]


CHECKS_AT_IMPORT = """
import multiprocessing
from wsi_segment.errors import ConfigError
from wsi_segment.pipeline.inference.main_guard import check_main_guard

def check(where):
    try:
        check_main_guard()
        print(where, "passed", flush=True)
    except ConfigError as exc:
        print(where, "refused:", exc, flush=True)

check(__name__)  # module level: in the parent, and again in a spawned child's import

if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(target=check, args=("target",))
    child.start()
    child.join()
"""


def test_a_spawned_child_is_refused_only_while_it_imports_the_main_script(tmp_path):
    """A guarded script that still segments at module level: the parent passes (it has a
    guard), the spawned child is refused while it imports the script as `__mp_main__`, and
    the child's target (what a decoder, or a Dask worker process, runs) passes."""
    script = tmp_path / "half_guarded.py"
    done = run_script(script, CHECKS_AT_IMPORT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(" ", 2)[:2] for line in lines] == [
        ["__main__", "passed"],
        ["__mp_main__", "refused:"],
        ["target", "passed"],
    ]
    assert lines[1].startswith(f"__mp_main__ refused: {script}: segment_slide ran while")
    assert "decoders=0" in lines[1]
