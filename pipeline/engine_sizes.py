"""The engine's sizes as decisions of the run policy (`pipeline.run_policy.decide`): chunk
size, batch size, compute threads, the model lock, CUDA graphs and the cores, each from the
machine, the user's options and where the engine runs (locally or as a Dask band), with its
reason.
Kept apart from `run_policy` so that the policy reads as the list of what is decided."""

from __future__ import annotations

from wsi_segment.pipeline.machine import GIB, Gpu, Machine
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.read_policy import Decision

CPU_BATCH, GPU_BATCH = 16, 64
CPU_CHUNK_TILES, GPU_CHUNK_TILES = 4, 8
CPU_COMPUTES = 2


def chunk_tiles_decision(options: SegmentParams, cuda: bool) -> Decision[int]:
    if options.chunk_tiles is not None:
        return Decision(options.chunk_tiles, f"asked for (--chunk-tiles {options.chunk_tiles})")
    if cuda:
        return Decision(GPU_CHUNK_TILES, "a GPU: 8 x 8 tiles, one default batch per chunk")
    return Decision(CPU_CHUNK_TILES, "the CPU default")


def batch_size_decision(options: SegmentParams, cuda: bool, gpu: Gpu | None) -> Decision[int]:
    cap = (
        f"; capped to 80 % of the free memory of the {gpu.memory_bytes / GIB:.0f} GiB GPU, "
        "measured by one probe forward pass"
        if gpu is not None
        else ""
    )
    if options.batch_size is not None:
        return Decision(options.batch_size, f"asked for (--batch-size {options.batch_size}){cap}")
    if cuda:
        return Decision(GPU_BATCH, f"the GPU default{cap}")
    return Decision(CPU_BATCH, "the CPU default")


def computes_decision(options: SegmentParams, cuda: bool, band: bool, cores: int) -> Decision[int]:
    if cuda:
        return Decision(1, "one thread owns the GPU's model (its kernels queue on one stream)")
    if band:
        return Decision(1, "one per band: a worker's bands run side by side on its cores")
    if options.threads is not None:
        return Decision(options.threads, f"asked for (--threads {options.threads})")
    if cores < CPU_COMPUTES:
        return Decision(1, "one core: a second forward pass would only share it")
    return Decision(
        CPU_COMPUTES,
        "the CPU default: forward passes side by side spend less time in OpenMP barriers",
    )


def cuda_graphs_decision(options: SegmentParams, cuda: bool) -> Decision[bool]:
    """Whether torch replays the tile graph as a CUDA graph (torch is the runtime on GPUs)."""
    if not cuda:
        return Decision(False, "no GPU")
    if not options.cuda_graphs:
        return Decision(False, "asked for (--no-cuda-graphs)")
    return Decision(True, "a GPU: a batch is one replay, not hundreds of launches from Python")


def model_lock_decision(cuda: bool, band: bool, computes: int) -> Decision[bool]:
    if cuda:
        return Decision(True, "one forward pass at a time per GPU")
    if band:
        return Decision(False, "each band of a CPU worker runs on its own share of the cores")
    if computes > 1:
        return Decision(False, "compute threads run side by side, each on its share of cores")
    return Decision(True, "one compute thread takes turns with other slides' engines")


def cores_decision(
    machine: Machine, band: bool, at_once: int, bands: int
) -> tuple[Decision[int], ...]:
    whole = Decision(machine.cores, "every usable core of this process")
    if not band:
        return whole, whole
    share = max(1, machine.cores // at_once)
    process = max(1, min(machine.cores, share * bands))
    return (
        Decision(share, f"this band's share: {machine.cores} cores / {at_once} bands"),
        Decision(process, f"this worker's {bands} bands at once, {share} cores each"),
    )
