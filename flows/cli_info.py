"""`wsi-segment info SLIDE`: what the slide layer sees in a slide, as one JSON object.

Prints path, backend, vendor, levels (dimensions, downsamples, storage tile sizes), mpp
(null when the file does not say; `--mpp` overrides it) and where it came from, objective
power, associated images and the openslide bounds offset. Opening only parses metadata,
so `info` also decodes one small region of the coarsest level: a slide whose pixel data
is lost (truncated inside its JPEG tables, say) fails here rather than mid-run. Errors
are `WsiSegmentError`s, which flows/cli.py prints as one `error:` line with exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from wsi_segment.flows.cli_segment import add_backend_option, mpp_value
from wsi_segment.wsi.slide import Slide, open_slide

CHECK_SIZE = 256  # px of the coarsest level decoded as a sanity check


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "info",
        help="print a slide's levels, mpp and backend as JSON",
        description="Open a slide (file or fsspec URL) and print what wsi-segment sees "
        "in it as one JSON object: backend, vendor, levels, mpp, objective power, "
        "associated images.",
    )
    parser.add_argument("slide", metavar="SLIDE", help="slide file or fsspec URL (file://...)")
    add_backend_option(parser)
    parser.add_argument(
        "--mpp",
        type=mpp_value,
        help="micrometres per pixel at level 0, overriding the slide's metadata",
    )
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="do not decode a region (metadata only)",
    )
    parser.set_defaults(run=run)


def check_pixels(slide: Slide) -> None:
    """Decode a centred region of the coarsest level (raises SlideError if it cannot)."""
    level = slide.level_count - 1
    lw, lh = slide.level_dimensions[level]
    w, h = min(lw, CHECK_SIZE), min(lh, CHECK_SIZE)
    ds = slide.level_downsamples[level]
    location = (round((lw - w) // 2 * ds), round((lh - h) // 2 * ds))
    slide.read_region(location, level, (w, h))


def slide_info(
    path: str, backend: str = "auto", mpp: float | None = None, check: bool = True
) -> dict[str, Any]:
    """The JSON object `info` prints (Slide.info()), after an optional decode check."""
    with open_slide(path, backend=backend, mpp=mpp) as slide:
        if check:
            check_pixels(slide)
        return slide.info()


def to_json(info: dict[str, Any]) -> str:
    """One key per line, each value on one line (nested lists stay readable)."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in info.items()]
    return "{\n" + ",\n".join(lines) + "\n}"


def run(args: argparse.Namespace) -> int:
    info = slide_info(args.slide, args.backend, args.mpp, check=not args.no_check)
    try:
        print(to_json(info), flush=True)
    except BrokenPipeError:  # `wsi-segment info x.svs | head -3`: not worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0
