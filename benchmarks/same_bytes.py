"""Same bytes as a reference checkout: run the CLI of two source trees on the test slides and
compare every output file byte for byte.

    python benchmarks/same_bytes.py --base /work/wt-base --new . [--keep OUT]

For each slide and each option set below, both trees' `wsi-segment` (their own `.venv`) write
into their own folder, each with its own runtime cache (a compiled graph of one tree never
stands in for the other's), and the zarr store's files, tissue.geojson and overlay.png are
compared by sha256. summary.json is not compared: it holds timings. Exit status 1 on any
difference, with the differing files listed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SLIDES = ("tests/data/CMU-1-Small-Region.svs", "tests/data/OS-1-detail.ome.tif")
OPTIONS = {"defaults": [], "torch-fp32": ["--runtime", "torch", "--precision", "fp32"]}
ROI = {  # a --roi run on the CMU slide (level-0 box on tissue)
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[700, 900], [1500, 900], [1500, 1700], [700, 1700], [700, 900]]],
            },
            "properties": {"objectType": "annotation", "name": "A"},
        }
    ],
}
COMPARED = ("probabilities.ome.zarr", "tissue.geojson", "overlay.png")


def run_tree(tree: Path, out: Path, slide: Path, extra: list[str]) -> None:
    """`tree`'s CLI on `slide` (the same path for both trees: feature ids derive from it)."""
    env = {**os.environ, "WSI_SEGMENT_CACHE_DIR": str(out.parents[2] / f"cache-{tree.name}")}
    cmd = [str(tree / ".venv/bin/wsi-segment"), str(slide), "--out", str(out), "--quiet"]
    subprocess.run([*cmd, *extra], check=True, env=env, cwd=tree)


def digests(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of the compared outputs under a slide's output folder."""
    out = {}
    for name in COMPARED:
        top = folder / name
        files = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
        for path in files:
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the reference tree")
    parser.add_argument("--new", type=Path, default=Path("."), help="the tree under test")
    parser.add_argument("--keep", type=Path, help="write outputs here (default: a temp dir)")
    parser.add_argument(
        "--reuse-base", action="store_true", help="keep the base outputs already under --keep"
    )
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="same-bytes-"))
    roi = root / "roi.geojson"
    root.mkdir(parents=True, exist_ok=True)
    roi.write_text(json.dumps(ROI))
    cases = [(s, name, extra) for s in SLIDES for name, extra in OPTIONS.items()]
    cases += [
        (SLIDES[0], f"roi-{name}", [*extra, "--roi", str(roi)]) for name, extra in OPTIONS.items()
    ]
    failed = 0
    fresh = Path(tempfile.mkdtemp(prefix="new-", dir=root))  # never a finished (skipped) run
    for slide, name, extra in cases:
        found = []
        for tree, label in ((args.base.resolve(), "base"), (args.new.resolve(), fresh.name)):
            out = root / label / name / Path(slide).name
            if not (args.reuse_base and label == "base" and out.is_dir()):
                run_tree(tree, out, args.base.resolve() / slide, extra)
            (folder,) = [p for p in out.iterdir() if p.is_dir()]  # the slide's output folder
            found.append(digests(folder))
        base, new = found
        differ = sorted(k for k in base.keys() | new.keys() if base.get(k) != new.get(k))
        verdict = "same bytes" if not differ and base else f"DIFFER: {differ[:8]}"
        print(f"{Path(slide).name:28} {name:16} {len(base):4} files  {verdict}", flush=True)
        failed += bool(differ) or not base
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
