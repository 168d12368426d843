"""Fixed cost of tissue detection on a (large, pyramidal) slide.

    python -m benchmarks.tissue_detection SLIDE [--size 100000]

Writes a square synthetic slide first when SLIDE does not exist (benchmarks.slides, tile
bank, 60 % tissue). Reports, best of 3: `detect_tissue` as the pipeline calls it, and the
thumbnail the detection used to read (the coarsest level with a longer side >= 2048 px),
with the level each reads and its pixel count.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.slides import make_slide
from wsi_segment.wsi.slide import open_slide
from wsi_segment.wsi.tissue import detect_tissue, thumbnail_request


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def level_read(slide, size: int) -> dict:
    level = max(
        (i for i, d in enumerate(slide.level_dimensions) if max(d) >= size),
        key=lambda i: slide.level_downsamples[i],
        default=0,
    )
    w, h = slide.level_dimensions[level]
    return {"level": level, "level_px": [w, h], "mpix": round(w * h / 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("slide", type=Path)
    ap.add_argument("--size", type=int, default=100_000)
    args = ap.parse_args()
    if not args.slide.exists():
        t0 = time.perf_counter()
        make_slide(args.slide, args.size, 0.6, fast=True)
        print(f"wrote {args.slide} in {time.perf_counter() - t0:.0f} s")
    with open_slide(args.slide) as slide:
        request = thumbnail_request(slide.level_dimensions, 2048)
        report = {
            "slide_px": list(slide.dimensions),
            "levels": [list(d) for d in slide.level_dimensions],
            "detect_tissue_s": round(best_of(3, lambda: detect_tissue(slide)), 3),
            "reads": level_read(slide, request),
            "thumbnail_2048_s": round(best_of(3, lambda: slide.thumbnail(2048)), 3),
            "thumbnail_2048_reads": level_read(slide, 2048),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
