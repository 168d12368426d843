"""Byte-flip fuzzing of a real slide: every outcome is a valid output or the clear error.

30 copies of the CMU slide (fixed seed), each with a few bytes XOR-ed: a third anywhere,
a third in the TIFF header and directories (IFDs, their tag arrays), a third in level-0
JPEG tile data. Each copy runs through the real CLI in its own process (fuzz_driver.py)
with a time limit. Allowed outcomes:

- "output": exit 0, the five outputs, summary.json and tissue.geojson parse, zarr opens;
- "error":  exit 1, exactly one `error:` line naming the file, no traceback, nothing left.

Anything else (traceback, crash by signal, hang, partial folder) fails the test. A model
with mpp 20 um/px (the tiny model's weights, JSON edited) keeps each case to seconds
without overriding the slide's own mpp, so metadata damage is exercised too.
Statistics are printed and written to `fuzz_stats.json` in the test's tmp folder;
docs/reliability.md records a run.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CMU_SLIDE
from tests.reliability.conftest import REPO, cli_env, leftovers

N_CASES = 30
SEED = 20261122
TIME_LIMIT_S = 180.0


def coarse_model(tiny_model_dir, folder):
    import shutil

    shutil.copytree(tiny_model_dir, folder)
    doc = json.loads((folder / "model.json").read_text())
    doc["mpp"] = 20.0
    (folder / "model.json").write_text(json.dumps(doc))
    return folder


def structure_ranges(path) -> list[tuple[int, int]]:
    """Byte ranges of the TIFF header, every IFD and the out-of-line tag values."""
    import tifffile

    ranges = [(0, 16)]
    with tifffile.TiffFile(path) as tf:
        for page in tf.pages:
            ranges.append((page.offset, page.offset + 2 + 12 * len(page.tags) + 4))
            for tag in page.tags:
                if tag.valueoffset != tag.offset + 8:  # value stored out of line
                    ranges.append((tag.valueoffset, tag.valueoffset + max(tag.count, 1)))
    return ranges


def tile_ranges(path) -> list[tuple[int, int]]:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        return [(o, o + n) for o, n in zip(page.dataoffsets, page.databytecounts, strict=True)]


def make_cases(data: bytes, rng: np.random.Generator) -> list[tuple[str, bytes, list[int]]]:
    structure, tiles = structure_ranges(CMU_SLIDE), tile_ranges(CMU_SLIDE)
    cases = []
    for i in range(N_CASES):
        where = ("anywhere", "structure", "tiles")[i % 3]
        n_flips = int(rng.choice([1, 2, 4, 16, 64]))
        positions = []
        for _ in range(n_flips):
            if where == "anywhere":
                positions.append(int(rng.integers(0, len(data))))
            else:
                ranges = structure if where == "structure" else tiles
                lo, hi = ranges[int(rng.integers(0, len(ranges)))]
                positions.append(int(rng.integers(lo, max(hi, lo + 1))))
        buf = bytearray(data)
        for pos in positions:
            buf[pos] ^= int(rng.integers(1, 256))
        cases.append((f"{i:02d}-{where}-{n_flips}", bytes(buf), positions))
    return cases


def classify(code: int, timed_out: bool, log: str, out, slide_name: str) -> str:
    err = Path(log + ".err").read_text(errors="replace")
    stdout = Path(log + ".out").read_text(errors="replace")
    if timed_out:
        return "BAD: hang"
    if "Traceback" in err or "Traceback" in stdout:
        return "BAD: traceback"
    if code == 0:
        from tests.reliability.conftest import assert_complete_output

        stem = slide_name.rsplit(".", 1)[0]
        try:
            summary = assert_complete_output(out / stem)
            import zarr

            zarr.open_group(str(out / stem / "probabilities.ome.zarr"), mode="r")["0/0"][:1, :1, :1]
        except Exception as exc:  # any failure here is the finding
            return f"BAD: incomplete output ({exc!r})"
        if leftovers(out) != [stem]:
            return f"BAD: leftovers {leftovers(out)}"
        return "output (no tissue)" if summary["tissue"]["note"] else "output"
    if code == 1:
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        if len(lines) != 1 or slide_name not in lines[0]:
            return f"BAD: error lines {lines!r}"
        if leftovers(out):
            return f"BAD: leftovers {leftovers(out)}"
        return "error"
    return f"BAD: exit code {code}"


@pytest.mark.slow
@pytest.mark.timeout(N_CASES * (TIME_LIMIT_S + 30) + 300)
def test_byte_flips_give_valid_output_or_the_clear_error(tiny_model_dir, tmp_path):
    model = coarse_model(tiny_model_dir, tmp_path / "coarse_model")
    rng = np.random.default_rng(SEED)
    cases = make_cases(CMU_SLIDE.read_bytes(), rng)
    specs, meta = [], []
    for name, blob, positions in cases:
        slide = tmp_path / "slides" / f"fuzz-{name}.svs"
        slide.parent.mkdir(exist_ok=True)
        slide.write_bytes(blob)
        out = tmp_path / "out" / name
        log = str(tmp_path / "logs" / name)
        (tmp_path / "logs").mkdir(exist_ok=True)
        argv = [str(slide), "--model", str(model), "--out", str(out), "--quiet"]
        argv += ["--precision", "fp32"]
        specs.append({"argv": argv, "log": log})
        meta.append((name, slide, out, log, positions))
    (tmp_path / "cases.json").write_text(json.dumps(specs))
    results_path = tmp_path / "results.json"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "tests/reliability/fuzz_driver.py"),
            str(tmp_path / "cases.json"),
            str(results_path),
            str(TIME_LIMIT_S),
        ],
        cwd=REPO,
        env=cli_env(),
        check=True,
        timeout=N_CASES * (TIME_LIMIT_S + 30),
    )
    results = json.loads(results_path.read_text())
    assert len(results) == N_CASES
    rows = []
    for (name, slide, out, log, positions), res in zip(meta, results, strict=True):
        outcome = classify(res["code"], res["timeout"], log, out, slide.name)
        err_lines = Path(log + ".err").read_text(errors="replace").splitlines()
        first_error = next((ln for ln in err_lines if ln.startswith("error:")), "")
        rows.append(
            {
                "case": name,
                "flips": len(positions),
                "outcome": outcome,
                "seconds": res["seconds"],
                "error": first_error.strip()[:200],
            }
        )
    stats = collections.Counter(r["outcome"] for r in rows)
    (tmp_path / "fuzz_stats.json").write_text(json.dumps({"stats": stats, "rows": rows}, indent=1))
    print(json.dumps({"seed": SEED, "cases": N_CASES, "stats": stats}, indent=1))
    for r in rows:
        print(r)
    bad = [r for r in rows if r["outcome"].startswith("BAD")]
    assert not bad, bad
