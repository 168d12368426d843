"""The pipeline's own stages rebuilt outside it, to measure each alone.

`plan_like_pipeline` and `read_chunks` plan and read the chunks with the functions
`wsi-segment` uses, and `bare_model` runs `model.predict` on tiles already in memory: the
reference the pipeline's throughput is compared with. `make_model` / `default_model` give
a bundle of the architecture to measure (random weights cost the same as trained ones).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Demo architecture (pipeline/training/demo_model.py): resnet10t PDA classifier, DeepLabV3+ on
# resnet10t with 64 decoder channels, tile 224 at 1.0 um/px.
DEMO_ARCH = {
    "classifier": ("resnet10t", "pda"),
    "segmenter": ("tu-resnet10t", 64),
    "tile": 224,
    "mpp": 1.0,
}
# The larger architecture: resnet50 PDA classifier + DeepLabV3+ on resnet50 (256).
R50_ARCH = {
    "classifier": ("resnet50", "pda"),
    "segmenter": ("resnet50", 256),
    "tile": 224,
    "mpp": 1.0,
}
# The bf16 yardstick: resnet34 PDA classifier + DeepLabV3+ on resnet34 (256).
R34_ARCH = {
    "classifier": ("resnet34", "pda"),
    "segmenter": ("resnet34", 256),
    "tile": 224,
    "mpp": 1.0,
}
ARCHS = {"demo": DEMO_ARCH, "r34": R34_ARCH, "r50": R50_ARCH}
# Tiny model for the memory run (as tests/conftest.py's tiny_model_dir): tile 64 at 2 um/px.
TINY_ARCH = {
    "classifier": ("resnet10t", "cam"),
    "segmenter": ("resnet18", 256),
    "tile": 64,
    "mpp": 2.0,
}


# --------------------------------------------------------------------------- models


def make_model(folder: Path, arch: dict[str, Any], name: str) -> Path:
    """A random bundle with the given architecture (same cost as trained weights)."""
    if (folder / "model.json").exists():
        return folder
    import torch

    from wsi_segment.models.bundle import save_model
    from wsi_segment.models.classifier import build_classifier
    from wsi_segment.models.meta import ModelMeta
    from wsi_segment.models.segmentation_model import SegmentationModel
    from wsi_segment.models.segmenter import build_segmenter
    from wsi_segment.synthetic.textures import CLASS_COLORS, CLASS_NAMES

    torch.manual_seed(0)
    meta = ModelMeta(
        name, list(CLASS_NAMES), list(CLASS_COLORS), mpp=arch["mpp"], tile_size=arch["tile"]
    )
    enc, head = arch["classifier"]
    senc, dec = arch["segmenter"]
    model = SegmentationModel(
        build_classifier(enc, head, len(CLASS_NAMES)),
        build_segmenter(senc, len(CLASS_NAMES), decoder_channels=dec),
        meta,
    )
    return save_model(model, folder, weights_dtype="float16")


def slide_and_model(
    work: Path, size: int, tissue: float, model: Path | None
) -> tuple[Path, str, Path, str]:
    """The bank slide of `size` px (made once, reused) and the model folder a benchmark runs:
    (slide, how it was written, model folder, what the model is)."""
    from benchmarks.slides import make_slide

    work.mkdir(parents=True, exist_ok=True)
    slide, writer = make_slide(work / f"tp-{size}-t{tissue}.svs", size, tissue, fast=True)
    if model is None:
        model_dir, model_desc = default_model(work)
    else:
        model_dir, model_desc = model, str(model)
    return slide, writer, model_dir, model_desc


def default_model(work: Path) -> tuple[Path, str]:
    """The demo model when present, else a random bundle of its architecture."""
    from wsi_segment.models.bundle import demo_model_dir

    demo = demo_model_dir()
    if (demo / "model.json").exists() and (demo / "model.safetensors").exists():
        return demo, "demo model (models/demo_model)"
    return (
        make_model(work / "models" / "demo-arch-random", DEMO_ARCH, "bench-random-demo-arch"),
        "random weights, demo architecture (demo model not present)",
    )


# --------------------------------------------------------------------------- planning


@dataclass
class Planned:
    """The pipeline's plan for one slide: what to read (chunks, level, scale) and cut."""

    slide: Any
    specs: list
    grid: Any
    level0_per_model: float
    read_level: int
    tiles: int
    redundant: float = 0.0
    extra: dict = field(default_factory=dict)


def plan_like_pipeline(
    slide_path: Path, meta: Any, overlap: int, chunk_tiles: int, ds: int, backend: str = "auto"
) -> Planned:
    """The chunks and tiles `wsi-segment` will run for a model described by `meta` (a
    `models.meta.ModelMeta`: its tile size and mpp), by the same functions it uses."""
    from wsi_segment.wsi.read_backend import fast_read_backend
    from wsi_segment.wsi.slide import open_slide
    from wsi_segment.wsi.tiling import TileGrid, plan_chunks
    from wsi_segment.wsi.tissue import detect_tissue

    slide = open_slide(str(slide_path), backend=backend)
    mpp = slide.require_mpp()
    tissue = detect_tissue(slide)
    grid = TileGrid(tile=int(meta.tile_size), overlap=overlap, downsample=ds)
    plan = plan_chunks(slide, mpp[0], float(meta.mpp), grid, chunk_tiles, tissue)
    if backend == "auto":  # chunk reads with the backend the pipeline picks (segment.py)
        fast = fast_read_backend(slide, plan.read_level)
        if fast:
            slide = open_slide(str(slide_path), backend=fast)
    return Planned(
        slide,
        plan.specs,
        grid,
        plan.level0_per_model,
        plan.read_level,
        plan.tiles,
        1.0 - (grid.stride / grid.tile) ** 2,
        {"tissue_fraction": float(tissue.fraction)},
    )


def read_chunks(p: Planned, limit_tiles: int | None = None) -> tuple[np.ndarray, float, float]:
    """Read every planned tile as the reader thread does; (tiles, wall s, cpu s)."""
    from wsi_segment.pipeline.inference.tile_reader import tile_boxes
    from wsi_segment.wsi.region_reader import read_model_tiles

    out = []
    t0, c0 = time.perf_counter(), time.process_time()
    boxes = chunk_read_boxes(p, p.specs)
    reader = tile_reuse_reader(p, boxes)  # as the pipeline's prefetcher reads
    n = 0
    for spec in p.specs:
        if not spec.tiles:
            continue
        out.append(
            read_model_tiles(
                p.slide,
                tile_boxes(spec.tiles, p.grid),
                p.level0_per_model,
                p.read_level,
                **reader,
            )
        )
        n += len(spec.tiles)
        if limit_tiles and n >= limit_tiles:
            break
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return np.concatenate(out), wall, cpu


def chunk_read_boxes(p: Planned, specs: list) -> list[tuple[int, int, int, int]]:
    """The model-pixel box each chunk reads: its tiles' extent (SlideJob's), else the whole
    chunk plus the margin."""
    from wsi_segment.pipeline.inference.tile_reader import TileReader

    slide = p.slide
    reader = TileReader(slide.path, slide.backend, None, p.level0_per_model, p.read_level, p.grid)
    return [reader.read_box(spec) for spec in specs]


def tile_reuse_reader(p: Planned, boxes: list) -> dict:
    """`reader=` for read_model_tiles that decodes each storage tile once, as TileReader
    with the prefetcher's TileReuse does; {} where the slide's level does not support it."""
    from wsi_segment.wsi.region_reader import level_read_box
    from wsi_segment.wsi.tiff_blocks import open_level_blocks
    from wsi_segment.wsi.tile_reuse import TileReuse, supports_reuse

    level, slide = p.read_level, p.slide
    tile = slide.storage_tile_size(level)
    if not supports_reuse(slide, level, tile):
        return {}
    ds = float(slide.level_downsamples[level])
    planned = [level_read_box(b, p.level0_per_model, ds) for b in boxes]
    blocks = open_level_blocks(slide, level)
    reuse = TileReuse(level, slide.level_dimensions[level], ds, tile, planned, blocks=blocks)
    return {"reader": lambda lx, ly, w, h: reuse.read(slide, lx, ly, w, h)}


def bare_model(
    forward: Callable[[Any], Any],
    tiles: np.ndarray,
    batch: int,
    streams: int = 1,
) -> tuple[float, float]:
    """(wall s, process cpu s) of `forward` (a model's batch of uint8 tensors (N, 3, T, T)
    in, tensors ready) over all tiles in batches.

    streams=1: one thread, torch with all cores (the classic way). streams=k: k threads
    each running its share of the batches with cores // k torch threads (what the pipeline
    does on a CPU; OpenVINO's executor takes its streams from that count). Both are
    measured; the faster is the reference for the ratio.
    """
    import threading

    import torch

    batches = [
        torch.from_numpy(np.ascontiguousarray(tiles[i : i + batch])).permute(0, 3, 1, 2)
        for i in range(0, len(tiles), batch)
    ]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    per = max(1, (cores or 1) // streams)
    before = torch.get_num_threads()

    def work(mine: list) -> None:
        torch.set_num_threads(per)
        forward(mine[0])  # warm-up of this thread (oneDNN, OpenVINO's infer request)
        ready.wait()
        for b in mine:
            forward(b)

    shares = [batches[k::streams] for k in range(streams) if batches[k::streams]]
    ready = threading.Barrier(len(shares) + 1)
    threads = [threading.Thread(target=work, args=(mine,)) for mine in shares]
    for t in threads:
        t.start()
    ready.wait()  # every thread warmed up: start the clock
    t0, c0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    torch.set_num_threads(before)
    return wall, cpu
