"""Same bytes as a reference checkout: run the CLI of two source trees on the test slides and
compare every output file byte for byte.

    python benchmarks/same_bytes.py --base /work/wt-base --new . [--keep OUT]
    python benchmarks/same_bytes.py --base /work/wt-base --new . --dask   # + a LocalCluster

For each slide and each option set below, both trees' `wsi-segment` (their own `.venv`) write
into their own folder, each with its own runtime cache (a compiled graph of one tree never
stands in for the other's), and the zarr store's files, tissue.geojson and overlay.png are
compared by sha256. summary.json is not compared: it holds timings. Exit status 1 on any
difference, with the differing files listed.

A synthetic slide (`--synthetic SIZE` px square, 0: none; written once into the output
folder by `benchmarks.slides.make_slide`) joins the two test slides.

`--dask` also runs the CMU slide and the synthetic one with each option set through
`wsi-segment batch` on a local Dask cluster (`--workers 2`: the slide's chunks in bands on two
worker processes) in both trees, and compares those outputs with each other and with the new
tree's local run (there tissue.geojson without its feature ids, which name the path the slide
was read at).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

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
IDS_ASIDE = "tissue.geojson without feature ids"


def run_tree(tree: Path, out: Path, slide: Path, extra: list[str]) -> None:
    """`tree`'s CLI on `slide` (the same path for both trees: feature ids derive from it)."""
    env = {**os.environ, "WSI_SEGMENT_CACHE_DIR": str(out.parents[2] / f"cache-{tree.name}")}
    cmd = [str(tree / ".venv/bin/wsi-segment"), str(slide), "--out", str(out), "--quiet"]
    subprocess.run([*cmd, *extra], check=True, env=env, cwd=tree)


def run_cluster(tree: Path, out: Path, slide: Path, extra: list[str]) -> None:
    """`tree`'s batch on a folder holding only `slide` (a copy at the same path for both
    trees), its chunks in bands on a local Dask cluster of two worker processes."""
    folder = out.parents[2] / "dask-input" / slide.stem
    if not (folder / slide.name).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(slide, folder / slide.name)
    env = {**os.environ, "WSI_SEGMENT_CACHE_DIR": str(out.parents[2] / f"cache-{tree.name}")}
    cmd = [str(tree / ".venv/bin/wsi-segment"), "batch", str(folder), "--out", str(out)]
    subprocess.run([*cmd, "--workers", "2", "--quiet", *extra], check=True, env=env, cwd=tree)


def digests(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of the compared outputs under a slide's output folder."""
    out = {}
    for name in COMPARED:
        top = folder / name
        files = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
        for path in files:
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    out[IDS_ASIDE] = hashlib.sha256(json.dumps(without_ids(folder)).encode()).hexdigest()
    return out


def without_ids(folder: Path) -> dict:
    """tissue.geojson without its feature ids: they derive from the run's fingerprint, which
    names the slide's path, and a batch reads the slide at another path than a local run."""
    collection = json.loads((folder / "tissue.geojson").read_text())
    for feature in collection["features"]:
        feature.pop("id", None)
    return collection


def ids_aside(digest: dict[str, str]) -> dict[str, str]:
    """`digest` with tissue.geojson compared without its feature ids."""
    return {k: v for k, v in digest.items() if k != "tissue.geojson"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the reference tree")
    parser.add_argument("--new", type=Path, default=Path("."), help="the tree under test")
    parser.add_argument("--keep", type=Path, help="write outputs here (default: a temp dir)")
    parser.add_argument(
        "--reuse-base", action="store_true", help="keep the base outputs already under --keep"
    )
    parser.add_argument(
        "--dask", action="store_true", help="also the CMU slide in bands on a local cluster"
    )
    parser.add_argument("--only", help="only the slides whose file name contains this (e.g. CMU-1)")
    parser.add_argument(
        "--synthetic", type=int, default=4096, help="a synthetic slide of this size too (0: none)"
    )
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="same-bytes-"))
    roi = root / "roi.geojson"
    root.mkdir(parents=True, exist_ok=True)
    roi.write_text(json.dumps(ROI))
    slides = [*SLIDES, *synthetic_slide(root, args.synthetic)]
    cases = [(s, name, extra) for s in slides for name, extra in OPTIONS.items()]
    cases += [
        (SLIDES[0], f"roi-{name}", [*extra, "--roi", str(roi)]) for name, extra in OPTIONS.items()
    ]
    cases = [c for c in cases if args.only is None or args.only in Path(c[0]).name]
    failed = 0
    fresh = Path(tempfile.mkdtemp(prefix="new-", dir=root))  # never a finished (skipped) run
    local_new: dict[str, dict[str, str]] = {}
    for slide, name, extra in cases:
        base, new = (
            run_both(args, root, label, name, slide, extra, run_tree)
            for label in ("base", fresh.name)
        )
        local_new[f"{slide} {name}"] = new
        failed += report(Path(slide).name, name, base, new)
    on_cluster = [s for s in (SLIDES[0], *slides[len(SLIDES) :]) if args.dask]
    for slide in (s for s in on_cluster if args.only is None or args.only in Path(s).name):
        for name, extra in OPTIONS.items():
            base, new = (
                run_both(args, root, label, f"dask-{name}", slide, extra, run_cluster)
                for label in ("base", fresh.name)
            )
            failed += report(Path(slide).name, f"dask-{name}", base, new)
            local = local_new[f"{slide} {name}"]
            # the batch reads a copy of the slide: feature ids differ by design, all else not
            failed += report(
                Path(slide).name, f"dask=local-{name}", ids_aside(local), ids_aside(new)
            )
    return 1 if failed else 0


def synthetic_slide(root: Path, size: int) -> list[str]:
    """[the path of a `size` px square synthetic slide under `root`] (written once), or []."""
    if size <= 0:
        return []
    from benchmarks.slides import make_slide

    path, _writer = make_slide(root / f"synthetic-{size}.tif", size, tissue_fraction=0.5)
    return [str(path)]


def run_both(
    args: argparse.Namespace,
    root: Path,
    label: str,  # "base", or the new tree's fresh folder
    name: str,
    slide: str,
    extra: list[str],
    run: Callable[[Path, Path, Path, list[str]], None],
) -> dict[str, str]:
    """The digests of one tree's outputs of `slide` with `extra`, run by `run` unless
    `--reuse-base` keeps the base's."""
    tree = args.base.resolve() if label == "base" else args.new.resolve()
    out = root / label / name / Path(slide).name
    if not (args.reuse_base and label == "base" and out.is_dir()):
        run(tree, out, args.base.resolve() / slide, extra)
    # the slide's output folder (a batch's OUT also holds its report's .report/)
    (folder,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return digests(folder)


def report(slide: str, name: str, base: dict[str, str], new: dict[str, str]) -> bool:
    """Print one comparison's line; True where the files differ (or none were compared)."""
    differ = sorted(k for k in base.keys() | new.keys() if base.get(k) != new.get(k))
    verdict = "same bytes" if not differ and base else f"DIFFER: {differ[:8]}"
    print(f"{slide:28} {name:18} {len(base):4} files  {verdict}", flush=True)
    return bool(differ) or not base


if __name__ == "__main__":
    sys.exit(main())
