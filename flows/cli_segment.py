"""`wsi-segment [segment] SLIDE [SLIDE ...]`: segment slides on this machine, no server.

Calls `pipeline.segment` directly (starting Prefect's local server would cost 8-20 s per
call). Each slide is independent: one failing prints its `error:` line and the others go on;
the exit code is 1 if any slide failed, 2 if the `--roi` file is bad (a usage error: checked
before anything loads) or has no region on a slide.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_segment.errors import ConfigError, RoiError, SlideStopped, WsiSegmentError
from wsi_segment.flows.signal_stop import signals_stop_runs
from wsi_segment.gc_pause import gc_paused
from wsi_segment.pipeline.output_files import optional_outputs, output_options
from wsi_segment.pipeline.outputs.naming import is_control, one_line
from wsi_segment.pipeline.params import (
    PRECISIONS,
    READ_DEVICES,
    READ_LEVELS,
    RUNTIMES,
    SegmentParams,
)
from wsi_segment.pipeline.progress import BarProgress
from wsi_segment.pipeline.run_warnings import slide_warnings
from wsi_segment.wsi.backends import BACKENDS, backend_choices
from wsi_segment.wsi.mpp import mpp_problem
from wsi_segment.wsi.shown_path import shown_text

if TYPE_CHECKING:
    from wsi_segment.pipeline.segment import SlideResult


def positive_int(low: int, high: int) -> Callable[[str], int]:
    """argparse type: an int in [low, high], else a usage error naming the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range [{low}, {high}]")
        return value

    return parse


def mpp_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if (problem := mpp_problem(value)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return value


def output_root(text: str) -> Path:
    """argparse type of `--out`: a folder name without control characters or line breaks,
    as slide names must be (`output_name.refuse_control_characters`): every `done` line and
    error names it on one line."""
    found = sorted({one_line(ch) for ch in text if is_control(ch)})
    if found:
        raise argparse.ArgumentTypeError(
            f"'{one_line(text)}' holds control characters ({', '.join(found)}), which would "
            "break the one-line messages that name it; choose a folder without them"
        )
    return Path(text)


def even_overlap(text: str) -> int:
    value = positive_int(0, 1024)(text)
    if value % 2:
        raise argparse.ArgumentTypeError(f"{value} must be even (half goes to each side)")
    return value


def add_backend_option(parser: argparse.ArgumentParser) -> None:
    """`--backend`, its choices and order read from the registry (`wsi.backends.BACKENDS`)."""
    parser.add_argument(
        "--backend",
        choices=backend_choices(),
        default="auto",
        help=f"the slide reader; auto: {', then '.join(BACKENDS)}, the first that opens the "
        "slide (a URL: those that read URLs) (default: %(default)s)",
    )


def add_segment_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `segment` and `batch`, group by group in the order `--help` lists."""
    add_location_options(parser)
    add_compute_options(parser)
    add_geometry_options(parser)
    add_parallelism_options(parser)
    add_backend_option(parser)
    add_result_options(parser)
    add_region_options(parser)
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar or 'loading the model' line"
    )


def add_location_options(parser: argparse.ArgumentParser) -> None:
    """`--model` and `--out`: which model reads the slides, where their outputs go."""
    parser.add_argument("--model", type=Path, help="model folder (default: the demo model)")
    parser.add_argument(
        "--out",
        type=output_root,
        default=Path("wsi-segment-out"),
        help="output root; each slide gets <out>/<slide stem>/ (default: %(default)s)",
    )


def add_compute_options(parser: argparse.ArgumentParser) -> None:
    """How the model runs: device, precision, runtime, and the tiles of a pass and a chunk."""
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto picks CUDA when present (default: %(default)s)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 on GPUs, and on CPUs with bf16 hardware for the runtime (torch: "
        "AMX; OpenVINO: AMX, or AVX512-BF16 on AMD) where the model keeps its labels and class "
        "areas on real H&E calibration tiles, else fp32 (never decided by the slide or "
        "timing); fp32 forces full precision; bf16 asks for bf16",
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="what runs the model: auto is OpenVINO on an AVX2 or AVX-512 CPU (compiled once per model and "
        "machine, cached in $WSI_SEGMENT_CACHE_DIR or ~/.cache/wsi-segment) and torch on a "
        "GPU; torch keeps the torch path (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int(1, 4096),
        default=None,
        help="tiles per forward pass, 1-4096; on a GPU capped to what its memory holds "
        "(default: 16 on the CPU, 64 on a GPU)",
    )
    parser.add_argument(
        "--chunk-tiles",
        type=positive_int(1, 64),
        default=None,
        help="a chunk (the unit read and planned at once) is N x N tiles: 1, 2, 4, 8 or a "
        "multiple of 8 up to 64; speed only: outputs are the same bytes whatever N (zarr chunks "
        "are 8 x 8 tile cores); batches mix tiles of several chunks (default: the run policy's, "
        "4 on the CPU, 8 on a GPU)",
    )


def add_geometry_options(parser: argparse.ArgumentParser) -> None:
    """The slide's scale and how model pixels map to tiles and output pixels."""
    parser.add_argument(
        "--mpp",
        type=mpp_value,
        help="micrometres per pixel at level 0, overriding the slide's metadata",
    )
    parser.add_argument(
        "--read-level",
        choices=READ_LEVELS,
        default="finer",
        help="which pyramid level is read: finer, never a level coarser than the model's "
        "pixels; serving, the coarsest at most 2%% coarser (a 40x scan at 0.252 um/px then "
        "reads its 4x level for a 1 um/px model, not level 0: 8-13x fewer tiles decoded; "
        "check its labels on your model first, docs/slides.md) (default: %(default)s)",
    )
    parser.add_argument(
        "--output-downsample",
        type=positive_int(1, 64),
        default=4,
        help="output pixel = N model pixels, 1-64 (default: %(default)s)",
    )
    parser.add_argument(
        "--overlap",
        type=even_overlap,
        default=32,
        help="model pixels shared by neighbouring tiles, even (default: %(default)s)",
    )


def add_parallelism_options(parser: argparse.ArgumentParser) -> None:
    """Threads and processes of the engine, and where it decodes the JPEG tiles."""
    parser.add_argument(
        "--threads",
        type=positive_int(1, 256),
        default=None,
        help="forward passes side by side on the CPU, each on cores/N of the cores, 1-256 "
        "(default: 2; on a GPU one thread owns the model). Speed only",
    )
    parser.add_argument(
        "--decoders",
        type=positive_int(0, 256),
        default=None,
        help="decoder processes feeding the model's owner, 0-256; 0: one reader thread "
        "instead (default: half the cores, at most 16, on a GPU; 0 on the CPU). On a "
        "Dask cluster: per band of chunks on each worker (default: as a local run there)",
    )
    parser.add_argument(
        "--writers",
        type=positive_int(1, 64),
        default=None,
        help="threads of the engine that finish chunks side by side (stitch, zarr "
        "write, polygons), 1-64 (default: the cores the decoders leave, 1 to 4)",
    )
    parser.add_argument(
        "--polygon-processes",
        type=positive_int(0, 64),
        default=None,
        help="processes that trace the writers' polygons (the same polygons, out of the GIL's "
        "way), 0-64; 0: each writer traces in its thread (default: one per writer on a GPU, "
        "0 on the CPU)",
    )
    parser.add_argument(
        "--no-cuda-graphs",
        action="store_true",
        help="on a GPU, launch each batch's kernels from Python instead of replaying the tile "
        "graph captured once as a CUDA graph (slower; to rule the capture out when a GPU "
        "misbehaves)",
    )
    parser.add_argument(
        "--read-device",
        choices=READ_DEVICES,
        default="auto",
        help="where the engine decodes JPEG tiles: gpu reads them onto the model's "
        "device (nvJPEG on CUDA; one reader thread, no decoder processes) wherever the slide "
        "allows it (model pixels = a level's pixels, tiled JPEG), else says why; cpu: the "
        "decoder processes; auto: gpu only on CUDA for YCbCr JPEG tiles (default: "
        "%(default)s); on a Dask cluster each worker decides for its bands",
    )


def add_result_options(parser: argparse.ArgumentParser) -> None:
    """What a run writes: the gate, replacing finished outputs, and the optional outputs."""
    parser.add_argument(
        "--no-gate",
        action="store_true",
        help="do not zero classes the tile classifier says are absent",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace finished outputs instead of reporting 'up to date'",
    )
    for output in optional_outputs():  # --ome-tiff, --tile-objects, ...: the registry's
        parser.add_argument(output.flag, action="store_true", help=output.help)


def add_region_options(parser: argparse.ArgumentParser) -> None:
    """Which part of the slide is processed: detected tissue, all of it, or QuPath regions."""
    parser.add_argument(
        "--tissue",
        choices=("auto", "all"),
        default="auto",
        help="auto: detect tissue on a thumbnail; all: skip detection, the whole slide is "
        "tissue (default: %(default)s)",
    )
    parser.add_argument(
        "--roi",
        type=Path,
        metavar="FILE.geojson",
        help="process only inside the polygons of a QuPath GeoJSON export (annotations); "
        "outputs are clipped to them and class areas reported per region",
    )


def params_from_args(args: argparse.Namespace) -> SegmentParams:
    return SegmentParams(
        model_dir=args.model,
        device=args.device,
        precision=args.precision,
        runtime=args.runtime,
        batch_size=args.batch_size,
        chunk_tiles=args.chunk_tiles,
        mpp=args.mpp,
        output_downsample=args.output_downsample,
        overlap=args.overlap,
        threads=args.threads,
        decoders=args.decoders,
        writers=args.writers,
        polygon_processes=args.polygon_processes,
        read_device=args.read_device,
        read_level=args.read_level,
        cuda_graphs=not args.no_cuda_graphs,
        backend=args.backend,
        gate=not args.no_gate,
        overwrite=args.overwrite,
        extra_outputs=frozenset(o for o in output_options() if getattr(args, o)),
        tissue=args.tissue,
        roi=args.roi,
    )


def check_roi_file(roi: Path | None) -> bool:
    """Read the `--roi` file once before any slide or model loads: a bad one is one `error:`
    line (False); objects that are not regions are one `warning:` line that counts them."""
    if roi is None:
        return True
    from wsi_segment.wsi.roi_file import read_roi_file

    try:
        warning = read_roi_file(roi).warning()
    except RoiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return True


def check_distinct_slides(slides: list[str]) -> None:
    """Refuse, before anything loads, two slides that would write to one output folder
    (`a/x.svs b/x.svs`): `ConfigError`, one `error:` line naming both. A slide whose name is
    bad on its own is left to its run, which reports it and lets the others go on."""
    from wsi_segment.pipeline.outputs.output_name import check_distinct_names, slide_output_name

    named: list[tuple[str, str]] = []
    for slide in slides:
        with contextlib.suppress(ConfigError):
            named.append((slide, slide_output_name(slide)))
    check_distinct_names(
        named,
        "",
        "segment them in separate calls with different --out folders, or run them with "
        "`wsi-segment batch` and a manifest whose 'name' column names each one",
    )


def print_warnings(result: SlideResult) -> None:
    """A `warning:` line per warning of the run (`pipeline.run_warnings`; the run still
    succeeds: an empty result is a result)."""
    for warning in slide_warnings(result):
        print(f"warning: {warning}", file=sys.stderr)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment slides (also the default: wsi-segment SLIDE ...)",
        description="Segment whole-slide images into tissue classes; writes OME-Zarr "
        "probabilities, QuPath GeoJSON, an overlay and a summary per slide.",
    )
    parser.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files or fsspec URLs")
    add_segment_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with gc_paused():  # imports make many objects and few cycles: ~20 % faster without it
        from wsi_segment.pipeline.segment import segment_slide

    params = params_from_args(args)
    check_distinct_slides(args.slides)
    if not check_roi_file(params.roi):
        return 2
    failed = usage = 0
    with signals_stop_runs() as stop:
        for slide in args.slides:
            try:
                result = segment_slide(
                    slide, args.out, params, progress=BarProgress(args.quiet), cancel=stop.token
                )
            except WsiSegmentError as exc:
                print(f"error: {shown_text(str(exc))}", file=sys.stderr)
                failed += 1
                usage += isinstance(exc, RoiError)  # its regions are off this slide
                continue
            except SlideStopped as exc:  # the signal's own exception was dropped: the token's
                raise stop.exception() from exc
            except Exception as exc:
                if stop.signum is None:
                    raise
                raise stop.exception() from exc  # a library turned the stop into its own error
            print_warnings(result)
            if result.status == "up-to-date":  # the result's slide is as shown
                print(f"{result.slide}: up to date in {result.out_dir} (use --overwrite to redo)")
            else:
                print(f"{result.slide}: done in {result.seconds:.1f} s -> {result.out_dir}")
        if stop.signum is not None:  # the last slide's error was a stop our code reworded
            raise stop.exception()
    return 2 if usage else 1 if failed else 0
