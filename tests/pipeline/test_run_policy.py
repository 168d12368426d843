"""The run policy, decided from machine descriptions as data: every GPU decision is tested
here on a CPU, with the descriptions of the machines it is made for (no torch, no CUDA)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import LOCAL_FACTS, TORCH_SPEC
from wsi_segment.errors import PlanMismatch
from wsi_segment.models.cpu import cpu_flags
from wsi_segment.models.precision_calibration import PrecisionCalibration
from wsi_segment.pipeline.machine import GIB, Gpu, Machine, probe_machine
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.read_policy import (
    ASKED_CPU,
    DAEMONIC,
    NO_NVJPEG,
    NOT_CUDA,
    NOT_EXAMINED,
    RGB_CODED,
    Decision,
    ReadFacts,
)
from wsi_segment.pipeline.run_policy import (
    BAND,
    CLUSTER,
    SLIDE_DECISIONS,
    WORKER_DECISIONS,
    RunFacts,
    decide,
    engine_in_process,
    for_worker,
    runtime_spec,
    settled,
    waits_for_verdict,
    wants_slide_reads,
)

AVX2 = frozenset({"sse4_2", "avx2", "fma"})
ZEN4 = AVX2 | {"avx512f", "avx512_bf16"}  # AVX512-BF16, no AMX
SAPPHIRE = ZEN4 | {"amx_tile", "amx_bf16"}
H100 = Gpu("NVIDIA H100 80GB HBM3", 80 * GIB)
A100 = Gpu("NVIDIA A100-SXM4-40GB", 40 * GIB)

CPU_ONLY = Machine(cores=2, memory_bytes=8 * GIB, cpu_flags=AVX2)
BF16_ONLY = Machine(cores=32, memory_bytes=64 * GIB, cpu_flags=ZEN4)
AMX = Machine(cores=2, memory_bytes=8 * GIB, cpu_flags=SAPPHIRE)
ONE_H100 = Machine(cores=16, memory_bytes=128 * GIB, cpu_flags=SAPPHIRE, gpus=(H100,))
FOUR_GPUS = Machine(cores=64, memory_bytes=512 * GIB, cpu_flags=ZEN4, gpus=(A100,) * 4)
NO_NVJPEG_GPU = Machine(
    cores=8, memory_bytes=32 * GIB, cpu_flags=AVX2, gpus=(Gpu("NVIDIA L4", 24 * GIB, True, False),)
)
SMALL_GPU = Machine(
    cores=4, memory_bytes=16 * GIB, cpu_flags=AVX2, gpus=(Gpu("Quadro P1000", 4 * GIB, False),)
)
YCBCR = ReadFacts(ycbcr=True)  # an OME-TIFF's JFIF tiles: nvJPEG decodes them
APERIO = ReadFacts(ycbcr=False)  # RGB-coded tiles: right colours only through libjpeg
AUTO = SegmentParams()
ALONE = {"at_once": 1, "reads": None, "daemonic": False, "worker_bands": 1}  # a worker's facts


def values(policy) -> dict:
    """Each decision's value, by name."""
    return {name: d["value"] for name, d in policy.as_dict().items() if isinstance(d, dict)
            and "value" in d}  # fmt: skip


def test_cpu_only_keeps_today_s_defaults():
    policy = decide(CPU_ONLY, AUTO, LOCAL_FACTS)
    assert values(policy) == {
        "device": "cpu",
        "runtime": "torch",
        "precision": "fp32",
        "chunk_tiles": 4,
        "batch_size": 16,
        "compute_threads": 2,
        "model_lock": False,  # two compute threads side by side
        "cuda_graphs": False,
        "cores": 2,
        "process_cores": 2,
        "read_device": "cpu",
        "decoders": 0,
        "writers": 2,
        "polygon_processes": 0,  # the writers trace in their threads
    }
    assert policy.read_source == "reader thread"
    assert policy.read_device.reason == NOT_CUDA
    assert policy.precision.reason == (
        "auto on a CPU with no bf16 hardware (bf16 is not reliably faster there)"
    )
    assert policy.device.reason == "auto: no CUDA GPU"
    assert not wants_slide_reads(CPU_ONLY, AUTO)  # no file is opened for it


def test_cpu_options_win_and_one_thread_takes_the_lock():
    asked = SegmentParams(threads=1, batch_size=5, chunk_tiles=2, decoders=2, writers=3)
    policy = decide(CPU_ONLY, asked, LOCAL_FACTS)
    assert (policy.compute_threads.value, policy.model_lock.value) == (1, True)
    assert (policy.batch_size.value, policy.chunk_tiles.value) == (5, 2)
    assert (policy.decoders.value, policy.writers.value) == (2, 3)
    assert policy.read_source == "decoder processes"
    assert policy.batch_size.reason == "asked for (--batch-size 5)"
    assert decide(CPU_ONLY, SegmentParams(threads=5), LOCAL_FACTS).compute_threads.value == 5


def test_one_core_runs_one_forward_pass_at_a_time():
    """A 1-core machine, or a container whose CPU quota is one core (`cpu_quota`)."""
    one_core = dataclasses.replace(CPU_ONLY, cores=1)
    policy = decide(one_core, SegmentParams(), LOCAL_FACTS)
    assert (policy.cores.value, policy.compute_threads.value, policy.model_lock.value) == (
        1, 1, True
    )  # fmt: skip
    asked = SegmentParams(threads=2)
    assert decide(one_core, asked, LOCAL_FACTS).compute_threads.value == 2


def test_polygon_processes_one_per_writer_on_a_gpu_none_on_the_cpu_or_a_daemonic_worker():
    gpu = decide(ONE_H100, AUTO, RunFacts(reads=YCBCR))
    assert gpu.polygon_processes.value == gpu.writers.value == 4
    assert gpu.polygon_processes.reason == "a GPU: one per writer thread (tracing holds the GIL)"
    assert decide(CPU_ONLY, AUTO, LOCAL_FACTS).polygon_processes.value == 0
    asked = decide(CPU_ONLY, SegmentParams(polygon_processes=3), LOCAL_FACTS).polygon_processes
    assert (asked.value, asked.reason) == (3, "asked for (--polygon-processes 3)")
    off = decide(ONE_H100, SegmentParams(polygon_processes=0), RunFacts(reads=YCBCR))
    assert off.polygon_processes.value == 0
    band = RunFacts(place=BAND, reads=APERIO, daemonic=True)
    assert decide(ONE_H100, AUTO, band).polygon_processes.value == 0
    assert decide(ONE_H100, SegmentParams(polygon_processes=2), band).polygon_processes.value == 0


def test_avx512_bf16_without_amx_runs_fp32():
    policy = decide(BF16_ONLY, AUTO, LOCAL_FACTS)
    assert policy.precision.value == "fp32"
    assert policy.precision.reason == (
        "auto on a CPU with AVX512-BF16 without AMX (bf16 is not reliably faster there)"
    )
    assert (policy.decoders.value, policy.writers.value) == (0, 4)  # 32 cores: writers capped
    assert policy.machine.as_dict()["cpu_bf16"] == "avx512_bf16"


def test_amx_calibrates_bf16_and_fp32_stays_asked():
    policy = decide(AMX, AUTO, LOCAL_FACTS)
    assert policy.precision.value == "bf16-if-calibrated"
    assert policy.precision.reason == (
        "auto on a CPU with AMX: bf16 where the model keeps its labels on fixed calibration "
        "tiles, else fp32"
    )
    assert policy.machine.as_dict()["cpu_bf16"] == "amx"
    fp32 = decide(AMX, SegmentParams(precision="fp32"), LOCAL_FACTS).precision
    assert (fp32.value, fp32.reason) == ("fp32", "asked for (--precision fp32)")


def test_a_plan_waiting_for_the_bf16_verdict_is_settled_only_by_its_runtime_s_verdict():
    """The loader's calibration decides bf16-if-calibrated (bf16 or fp32, by `decide`); a
    load that ran without one, or in another runtime (OpenVINO fell back to torch), or a plan
    that waited for none, is left as it was."""
    waiting = decide(AMX, AUTO, LOCAL_FACTS)
    assert waits_for_verdict(waiting) and waiting.runtime.value == "torch"
    keeps = PrecisionCalibration(tiles=6, tile_size=224, agreement=0.999, max_area_shift=0.001)
    moves = PrecisionCalibration(tiles=6, tile_size=224, agreement=0.98, max_area_shift=0.05)
    bf16 = settled(waiting, "torch", keeps)
    assert (bf16.precision.value, bf16.precision.reason) == tuple(keeps.reason().split(": ", 1))
    assert bf16.precision.value == "bf16" and not waits_for_verdict(bf16)
    assert settled(waiting, "torch", moves).precision.value == "fp32"
    assert settled(waiting, "openvino", keeps) is waiting
    assert settled(waiting, "torch", None) is waiting
    fp32 = decide(AMX, SegmentParams(precision="fp32"), LOCAL_FACTS)
    assert not waits_for_verdict(fp32) and settled(fp32, "torch", keeps) is fp32


def test_one_h100():
    policy = decide(ONE_H100, AUTO, RunFacts(reads=YCBCR))
    assert values(policy) == {
        "device": "cuda",
        "runtime": "torch",
        "precision": "bf16",
        "chunk_tiles": 8,
        "batch_size": 64,
        "compute_threads": 1,
        "model_lock": True,
        "cuda_graphs": True,
        "cores": 16,
        "process_cores": 16,
        "read_device": "gpu",
        "decoders": 0,  # the device read path decodes in its reader thread
        "writers": 4,
        "polygon_processes": 4,  # one per writer: tracing holds the GIL
    }
    assert policy.device.reason == "auto: the GPU, NVIDIA H100 80GB HBM3 (80 GiB)"
    assert policy.precision.reason == "auto on a GPU with bf16 (NVIDIA H100 80GB HBM3)"
    assert policy.device_decoder == "nvjpeg"
    assert policy.read_source == "device read path"
    assert wants_slide_reads(ONE_H100, AUTO)
    # Aperio's RGB-coded tiles: decoder processes on half the cores, writers on the rest
    aperio = decide(ONE_H100, AUTO, RunFacts(reads=APERIO))
    assert (aperio.read_device.value, aperio.read_device.reason) == ("cpu", RGB_CODED)
    assert (aperio.decoders.value, aperio.writers.value) == (8, 4)
    assert aperio.read_source == "decoder processes"
    # --threads is the CPU's: one thread owns a GPU's model
    assert decide(ONE_H100, SegmentParams(threads=3), LOCAL_FACTS).compute_threads.value == 1
    # asked for the host reads: the slide need not be examined
    cpu_reads = SegmentParams(read_device="cpu")
    assert not wants_slide_reads(ONE_H100, cpu_reads)
    assert decide(ONE_H100, cpu_reads, LOCAL_FACTS).read_device.reason == ASKED_CPU
    assert decide(ONE_H100, AUTO, LOCAL_FACTS).read_device.reason == NOT_EXAMINED


def test_cuda_graphs_on_a_gpu_unless_asked_off_and_carried_to_the_loader():
    """The decision is the plan's, recorded with its reason, and the loader's spec carries
    it: models/ builds the graph executor from the spec alone."""
    on = decide(ONE_H100, AUTO, LOCAL_FACTS)
    assert (on.cuda_graphs.value, runtime_spec(on, TORCH_SPEC.geometry).cuda_graphs) == (True, True)
    off = decide(ONE_H100, SegmentParams(cuda_graphs=False), LOCAL_FACTS)
    assert (off.cuda_graphs.value, off.cuda_graphs.reason) == (
        False,
        "asked for (--no-cuda-graphs)",
    )
    assert runtime_spec(off, TORCH_SPEC.geometry).cuda_graphs is False
    cpu = decide(CPU_ONLY, AUTO, LOCAL_FACTS)
    assert (cpu.cuda_graphs.value, cpu.cuda_graphs.reason) == (False, "no GPU")
    assert runtime_spec(cpu, TORCH_SPEC.geometry).cuda_graphs is False
    assert "cuda_graphs" in WORKER_DECISIONS  # a band's worker may have no GPU


def test_a_batch_on_one_gpu_shares_the_decoders_between_slides():
    """Each slide in flight gets its share of the machine's decoders (at least one), so two
    slides never spawn 2 x (cores / 2) of them; --decoders wins; a CPU keeps its threads."""
    host = RunFacts(reads=APERIO)

    def shared(machine: Machine, slides: int, asked: int | None = None) -> int:
        facts = RunFacts(at_once=slides, reads=APERIO)
        return decide(machine, SegmentParams(decoders=asked), facts).decoders.value

    h100_64 = Machine(64, 0, gpus=(H100,))
    assert shared(ONE_H100, 2) == 4  # 8 // 2: half the 16 cores, shared
    assert shared(ONE_H100, 3) == 2
    assert shared(ONE_H100, 1) == 8 == decide(ONE_H100, AUTO, host).decoders.value
    assert shared(h100_64, 2) == 8  # the 16 cap, shared
    assert shared(Machine(2, 0, gpus=(H100,)), 4) == 1  # never none: one each
    assert shared(Machine(1, 0, gpus=(H100,)), 2) == 1
    assert shared(BF16_ONLY, 2) == 0
    assert shared(ONE_H100, 2, asked=5) == 5 and shared(ONE_H100, 2, asked=0) == 0
    assert (
        "shared by 2 slides in flight"
        in decide(ONE_H100, AUTO, RunFacts(at_once=2, reads=APERIO)).decoders.reason
    )


def test_four_gpus():
    policy = decide(FOUR_GPUS, AUTO, RunFacts(reads=YCBCR))
    assert policy.device.value == "cuda"
    assert policy.device.reason == "auto: the first of 4 GPUs, NVIDIA A100-SXM4-40GB (40 GiB)"
    assert (policy.batch_size.value, policy.read_device.value) == (64, "gpu")
    assert engine_in_process(FOUR_GPUS, AUTO, None, None).value is False
    assert engine_in_process(FOUR_GPUS, AUTO, None, None).reason == "4 GPUs: one worker each"
    assert engine_in_process(ONE_H100, AUTO, None, None).value is True
    assert engine_in_process(ONE_H100, AUTO, 2, None).value is False
    assert engine_in_process(CPU_ONLY, AUTO, 0, None).value is True
    # no GPU: the engine in this process too (a local cluster of one CPU worker only adds
    # its start); asked for, a local cluster still
    assert engine_in_process(CPU_ONLY, AUTO, None, None).value is True
    assert engine_in_process(CPU_ONLY, AUTO, 1, None).value is False
    assert engine_in_process(ONE_H100, AUTO, None, "tcp://h:8786").value is False
    # the 4 workers of a 4-GPU machine run one band each at a time: its cores shared out
    band = decide(FOUR_GPUS, AUTO, RunFacts(place=BAND, at_once=4, reads=APERIO))
    assert (band.cores.value, band.decoders.value, band.writers.value) == (16, 4, 4)


def test_a_gpu_without_nvjpeg_reads_on_the_host():
    policy = decide(NO_NVJPEG_GPU, AUTO, RunFacts(reads=YCBCR))
    assert (policy.read_device.value, policy.read_device.reason) == ("cpu", NO_NVJPEG)
    assert policy.decoders.value == 4  # half its 8 cores
    assert NO_NVJPEG_GPU.jpeg_decoders == ("libjpeg",)
    assert ONE_H100.jpeg_decoders == ("libjpeg", "nvjpeg")
    forced = decide(NO_NVJPEG_GPU, SegmentParams(read_device="gpu"), RunFacts(reads=YCBCR))
    assert (forced.read_device.value, forced.device_decoder) == ("gpu", "libjpeg")


def test_a_small_memory_gpu_caps_its_batch_and_runs_fp16():
    policy = decide(SMALL_GPU, AUTO, RunFacts(reads=YCBCR))
    assert policy.batch_size.value == 64
    assert policy.batch_size.reason == (
        "the GPU default; capped to 80 % of the free memory of the 4 GiB GPU, measured by one "
        "probe forward pass"
    )
    assert policy.precision.value == "fp16"
    assert policy.precision.reason == "auto on a GPU without bf16 (Quadro P1000)"
    assert policy.as_dict()["machine"]["gpus"] == [
        {"name": "Quadro P1000", "memory_gib": 4.0, "bf16": False, "nvjpeg": True}
    ]


def test_device_and_reads_as_asked():
    cuda = decide(CPU_ONLY, SegmentParams(device="cuda"), LOCAL_FACTS)  # the loader names the fix
    assert (cuda.device.value, cuda.chunk_tiles.value, cuda.batch_size.value) == ("cuda", 8, 64)
    cpu = decide(ONE_H100, SegmentParams(device="cpu"), LOCAL_FACTS)
    assert (cpu.device.value, cpu.batch_size.value, cpu.decoders.value) == ("cpu", 16, 0)
    # --read-device gpu on a CPU: the device read path with libjpeg wherever the slide allows
    gpu = SegmentParams(read_device="gpu")
    assert wants_slide_reads(CPU_ONLY, gpu)
    on_cpu = decide(CPU_ONLY, gpu, RunFacts(reads=APERIO))
    assert (on_cpu.read_device.value, on_cpu.device_decoder) == ("gpu", "libjpeg")
    resampled = ReadFacts(unsupported="model pixels are not level 0's pixels")
    why = decide(CPU_ONLY, gpu, RunFacts(reads=resampled)).read_device
    assert (why.value, why.reason) == ("cpu", "model pixels are not level 0's pixels")


def test_bands_decide_from_their_share_of_the_worker():
    band = RunFacts(place=BAND, at_once=4)
    cpu = decide(BF16_ONLY, SegmentParams(threads=6, writers=3), band)
    assert (cpu.cores.value, cpu.compute_threads.value, cpu.model_lock.value) == (8, 1, False)
    assert cpu.writers.value == 4  # sized from the band's cores, not --writers
    assert decide(BF16_ONLY, SegmentParams(decoders=3), band).decoders.value == 3
    gpu = decide(ONE_H100, AUTO, RunFacts(place=BAND, reads=APERIO))
    assert (gpu.model_lock.value, gpu.decoders.value) == (True, 8)
    # decoders: on GPU workers by default, shared by the bands at once; anywhere as asked
    assert decide(BF16_ONLY, SegmentParams(decoders=3), band).decoders.value == 3
    asked_none = SegmentParams(decoders=0)
    assert decide(ONE_H100, asked_none, RunFacts(BAND, reads=APERIO)).decoders.value == 0
    for bands, cores, decoders in ((1, 16, 8), (4, 16, 2), (8, 2, 1)):
        facts = RunFacts(BAND, bands, reads=APERIO)
        machine = dataclasses.replace(ONE_H100, cores=cores)
        assert decide(machine, AUTO, facts).decoders.value == decoders
    daemonic = decide(ONE_H100, AUTO, RunFacts(place=BAND, reads=APERIO, daemonic=True))
    assert daemonic.decoders.value == 0
    assert daemonic.decoders.reason.startswith(DAEMONIC) and daemonic.decoders_refused
    assert not gpu.decoders_refused
    assert daemonic.read_source == "reader thread"


def test_a_worker_s_model_runs_on_its_bands_cores_together():
    """The bands of one worker process share its model: OpenVINO's threads are their shares
    together (never the machine's more), whatever torch's thread count in the worker."""
    band = decide(BF16_ONLY, AUTO, RunFacts(place=BAND, at_once=8, worker_bands=2))
    assert (band.cores.value, band.process_cores.value) == (4, 8)
    assert band.process_cores.reason == "this worker's 2 bands at once, 4 cores each"
    uneven = decide(BF16_ONLY, AUTO, RunFacts(place=BAND, at_once=5, worker_bands=5))
    assert (uneven.cores.value, uneven.process_cores.value) == (6, 30)
    crowded = decide(CPU_ONLY, AUTO, RunFacts(place=BAND, at_once=4, worker_bands=4))
    assert (crowded.cores.value, crowded.process_cores.value) == (1, 2)
    local = decide(BF16_ONLY, AUTO, RunFacts(at_once=3))  # slides in flight share all of it
    assert local.process_cores.as_dict() == {
        "value": 32,
        "reason": "every usable core of this process",
    }


def _decisions(plan) -> dict:
    """Each decision of `plan` (value and reason), by name."""
    return {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)
            if isinstance(getattr(plan, f.name), Decision)}  # fmt: skip


def test_every_decision_is_either_the_worker_s_or_the_slide_s():
    """`for_worker` re-decides WORKER_DECISIONS and checks SLIDE_DECISIONS: a decision
    added to the plan must be named in one of them, or a band would silently take it."""
    plan = decide(CPU_ONLY, AUTO, LOCAL_FACTS)
    decisions = set(_decisions(plan))
    assert decisions == set(WORKER_DECISIONS) | set(SLIDE_DECISIONS) - {"calibration"}
    assert not set(WORKER_DECISIONS) & set(SLIDE_DECISIONS)


@pytest.mark.parametrize(
    ("client", "worker"),
    [(BF16_ONLY, dataclasses.replace(BF16_ONLY, cores=4)), (ONE_H100, FOUR_GPUS)],
    ids=["cpu", "gpu"],
)
def test_a_band_s_plan_is_the_shipped_plan_re_decided_for_its_worker(client, worker):
    """A band's plan: WORKER_DECISIONS as `decide` makes them from the worker's machine and
    the shipped facts with WORKER_FACTS set there; everything else the shipped plan's, reasons
    included (a GPU worker of another model and size: its batch cap names its memory)."""
    shipped = decide(client, AUTO, RunFacts(place=CLUSTER, at_once=3))
    band = for_worker(shipped, worker, at_once=2, reads=APERIO, daemonic=False, worker_bands=1)
    own = decide(worker, AUTO, RunFacts(place=BAND, at_once=2, reads=APERIO))
    assert (band.machine, band.place, band.facts) == (worker, BAND, own.facts)
    for name, decision in _decisions(band).items():
        assert decision == getattr(own if name in WORKER_DECISIONS else shipped, name), name
    worker_keys = {*WORKER_DECISIONS, "machine", "place", "read_source"}
    recorded = {k: v for k, v in own.as_dict().items() if k in worker_keys}
    assert band.as_dict() == {**shipped.as_dict(), **recorded}  # summary.json: same keys


def test_a_worker_that_would_decide_a_slide_decision_otherwise_refuses_the_plan():
    """Runtime, precision, its calibration and the chunk size are the slide's: a worker that
    would decide one otherwise (here a CPU plan on a GPU worker, a bf16 plan on a GPU
    without bf16, a calibration not the plan's) raises `PlanMismatch` naming it."""
    on_cpu = decide(dataclasses.replace(AMX, openvino=True), AUTO, RunFacts(place=CLUSTER))
    with pytest.raises(PlanMismatch, match="slide's runtime as torch") as gpu_worker:
        for_worker(on_cpu, ONE_H100, **ALONE)
    assert "the plan shipped to it says openvino (auto on a CPU" in str(gpu_worker.value)
    on_h100 = decide(ONE_H100, AUTO, RunFacts(place=CLUSTER))
    with pytest.raises(PlanMismatch, match=r"slide's precision as fp16 \("):
        for_worker(on_h100, SMALL_GPU, **ALONE)
    numbers = {"agreement": 0.999, "tiles": 6}
    # a calibration that is not what its facts decide
    warm = dataclasses.replace(decide(AMX, AUTO, LOCAL_FACTS), calibration=numbers)
    with pytest.raises(PlanMismatch, match="slide's calibration"):
        for_worker(warm, AMX, **ALONE)
    asked = SegmentParams(chunk_tiles=8)
    with pytest.raises(PlanMismatch, match="slide's chunk_tiles as 4"):
        for_worker(dataclasses.replace(decide(AMX, asked, LOCAL_FACTS), options=AUTO), AMX, **ALONE)
    with pytest.raises(ValueError, match="calibrations"):
        for_worker(on_cpu, AMX, calibrations={})  # settled by the client, never per worker


def test_cluster_planning_decides_the_chunk_size_here():
    assert decide(CPU_ONLY, AUTO, RunFacts(place=CLUSTER)).chunk_tiles.value == 4
    assert (
        decide(CPU_ONLY, SegmentParams(device="cuda"), RunFacts(place=CLUSTER)).chunk_tiles.value
        == 8
    )


def test_the_policy_is_plain_json_with_a_reason_for_every_decision():
    data = json.loads(json.dumps(decide(ONE_H100, AUTO, RunFacts(reads=YCBCR)).as_dict()))
    decisions = {k: v for k, v in data.items() if isinstance(v, dict) and "value" in v}
    assert len(decisions) == 14 and all(d["reason"] for d in decisions.values())
    assert data["place"] == "local" and data["read_source"] == "device read path"
    assert data["machine"]["gpus"][0]["memory_gib"] == 80.0


def test_probe_describes_this_machine_without_importing_torch_on_a_cpu():
    machine = probe_machine()
    assert machine.cores == len(os.sched_getaffinity(0))
    assert machine.cpu_flags == cpu_flags()
    assert machine.memory_bytes > 0
    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("an NVIDIA driver: the probe asks torch")
    assert machine.gpus == ()
    code = (
        "import sys; from wsi_segment.pipeline.machine import probe_machine; "
        "probe_machine(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_dask_run_records_each_distinct_band_policy_with_its_bands():
    """Bands on unlike workers: every policy is kept, each once, with the bands (in plan
    order) that ran it."""
    cpu = decide(BF16_ONLY, AUTO, RunFacts(place=BAND, at_once=2)).as_dict()
    gpu = decide(ONE_H100, AUTO, RunFacts(place=BAND, reads=APERIO)).as_dict()
    planned = decide(CPU_ONLY, AUTO, RunFacts(place=CLUSTER)).chunk_tiles
    from wsi_segment.pipeline.infer_stage import band_policies

    recorded = band_policies(planned, [cpu, gpu, cpu, gpu, gpu])
    assert recorded == {
        "place": "cluster",
        "chunk_tiles": {"value": 4, "reason": "the CPU default"},
        "band_policies": [{"bands": [0, 2], **cpu}, {"bands": [1, 3, 4], **gpu}],
    }
    assert json.loads(json.dumps(recorded)) == recorded
    assert band_policies(planned, [])["band_policies"] == []  # no tissue: no band ran


def test_runtime_openvino_on_cpus_that_have_it_torch_on_gpus() -> None:
    """`--runtime auto`: OpenVINO on an AVX2 or AVX-512 CPU where it is installed, torch on a
    GPU, on an older CPU (not measured) and where it is missing; the reason says which; the
    loader gets the decision and its reason, with the user's request beside it (auto falls
    back to torch with a warning)."""
    from wsi_segment.pipeline.run_policy import runtime_spec

    def decided_runtime(machine, options=AUTO):
        spec = runtime_spec(decide(machine, options, LOCAL_FACTS), TORCH_SPEC.geometry)
        return spec.runtime, spec.runtime_reason

    avx512 = dataclasses.replace(CPU_ONLY, cpu_flags=AVX2 | {"avx512f"})
    with_ov = {m: dataclasses.replace(m, openvino=True) for m in (CPU_ONLY, AMX, ONE_H100, avx512)}
    # AVX2, no AVX-512
    assert decide(with_ov[CPU_ONLY], AUTO, LOCAL_FACTS).runtime.value == "openvino"
    older = dataclasses.replace(with_ov[CPU_ONLY], cpu_flags=frozenset({"sse4_2"}))
    assert "without AVX2" in decide(older, AUTO, LOCAL_FACTS).runtime.reason
    assert decide(with_ov[avx512], AUTO, LOCAL_FACTS).runtime.value == "openvino"
    assert decide(with_ov[AMX], AUTO, LOCAL_FACTS).runtime.value == "openvino"
    assert decide(CPU_ONLY, AUTO, LOCAL_FACTS).runtime.value == "torch"  # not installed
    assert "cannot be imported" in decide(CPU_ONLY, AUTO, LOCAL_FACTS).runtime.reason
    gpu = decide(with_ov[ONE_H100], AUTO, LOCAL_FACTS)
    assert gpu.runtime.value == "torch" and "cuda" in gpu.runtime.reason
    asked_torch = SegmentParams(runtime="torch")
    assert decide(with_ov[CPU_ONLY], asked_torch, LOCAL_FACTS).runtime.value == "torch"
    # the loader opens the policy's runtime with its reason (models.runtimes.open_runtime)
    assert decided_runtime(with_ov[avx512]) == (
        "openvino",
        "openvino: auto on a CPU without bf16 hardware (faster than torch there)",
    )
    assert decided_runtime(CPU_ONLY) == (
        "torch",
        "torch: auto on a CPU OpenVINO, but it cannot be imported here",
    )
    named = SegmentParams(runtime="openvino")
    assert decided_runtime(with_ov[CPU_ONLY], named)[0] == "openvino"
    assert runtime_spec(decide(with_ov[CPU_ONLY], named, LOCAL_FACTS), TORCH_SPEC.geometry).by_name
    assert decide(with_ov[CPU_ONLY], AUTO, LOCAL_FACTS).as_dict()["machine"]["openvino"] is True


def test_runtime_openvino_asked_for_on_a_gpu_is_refused() -> None:
    from wsi_segment.errors import ConfigError

    with pytest.raises(ConfigError, match="--runtime openvino runs on the CPU"):
        decide(
            dataclasses.replace(ONE_H100, openvino=True),
            SegmentParams(runtime="openvino"),
            LOCAL_FACTS,
        )


def test_precision_is_decided_for_the_runtime_and_handed_to_the_loader() -> None:
    """The policy decides what runs (fp32, bf16, fp16, or bf16 if the model passes the
    calibration) for the runtime it decided, and torch's precision should OpenVINO not run
    the model, and hands both (value, reason) to the loader (`runtime_spec`)."""
    from wsi_segment.errors import ConfigError
    from wsi_segment.models.runtimes.decision import precision_decision
    from wsi_segment.pipeline.run_policy import runtime_spec

    def decided_precision(machine, options=AUTO):
        spec = runtime_spec(decide(machine, options, LOCAL_FACTS), TORCH_SPEC.geometry)
        return spec.precision, spec.precision_reason

    def fallback(machine, options=AUTO):
        spec = runtime_spec(decide(machine, options, LOCAL_FACTS), TORCH_SPEC.geometry)
        return spec.fallback, spec.fallback_reason

    with_ov = {m: dataclasses.replace(m, openvino=True) for m in (AMX, BF16_ONLY)}
    intel_bf16 = dataclasses.replace(with_ov[BF16_ONLY], cpu_flags=ZEN4)  # no sse4a: Intel
    amd_bf16 = dataclasses.replace(intel_bf16, cpu_flags=ZEN4 | {"sse4a"})
    # torch on AVX512-BF16 runs fp32; OpenVINO calibrates bf16 there on AMD, not on Intel
    assert decide(BF16_ONLY, AUTO, LOCAL_FACTS).precision.value == "fp32"
    assert decide(amd_bf16, AUTO, LOCAL_FACTS).runtime.value == "openvino"
    assert decided_precision(amd_bf16) == (
        "bf16-if-calibrated",
        "bf16-if-calibrated: auto on a CPU where OpenVINO's bf16 is faster (AMX, or "
        "AVX512-BF16 on AMD): bf16 where the model keeps its labels on fixed calibration "
        "tiles, else fp32",
    )
    assert decided_precision(intel_bf16) == (
        "fp32",
        "fp32: auto on a CPU where OpenVINO's bf16 is not faster (no AMX, and no "
        "AVX512-BF16 on an AMD CPU)",
    )
    assert decide(with_ov[AMX], AUTO, LOCAL_FACTS).precision.value == "bf16-if-calibrated"
    assert decided_precision(ONE_H100) == (
        "bf16",
        "bf16: auto on a GPU with bf16 (NVIDIA H100 80GB HBM3)",
    )
    # OpenVINO on AMD decided bf16-if-calibrated; torch there would run fp32 (no AMX)
    assert fallback(amd_bf16) == (
        "fp32",
        "fp32: auto on a CPU with AVX512-BF16 without AMX (bf16 is not reliably faster there)",
    )
    assert fallback(with_ov[AMX])[0] == "bf16-if-calibrated"
    assert fallback(ONE_H100) == decided_precision(ONE_H100)  # torch's own
    assert precision_decision("fp16", "cuda", "torch", AVX2, True) == (
        "fp16",
        "fp16: asked for (--precision fp16)",
    )
    with pytest.raises(ConfigError, match="fp16 autocast is for GPUs"):
        precision_decision("fp16", "cpu", "torch", AVX2, False)
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        precision_decision("fp8", "cuda", "torch", AVX2, True)


PASSING = {  # a bf16 calibration's numbers that keep fp32's answer (models.precision_calibration)
    "tiles": 6,
    "tile_size": 64,
    "agreement": 0.9991,
    "max_area_shift": 0.004,
    "area_shifts": {"1": 0.004},
    "own_patches": 0,
}
FAILING = {**PASSING, "agreement": 0.99}


def test_a_known_calibration_decides_bf16_if_calibrated_in_the_plan() -> None:
    """Where the model's bf16 verdict for the plan's runtime is known (`RunFacts.calibrations`:
    from the cache, or the load that obtained it), `decide` resolves bf16-if-calibrated to
    bf16 or fp32 with the verdict's reason, records the numbers, and hands the loader a
    decided precision; a verdict of another runtime, or a decision that needs none, is
    not taken."""
    torch_amx = SegmentParams(runtime="torch")
    waiting = decide(AMX, torch_amx, LOCAL_FACTS)
    assert (waiting.precision.value, waiting.calibration) == ("bf16-if-calibrated", None)
    assert waiting.as_dict()["calibration"] is None
    passed = decide(AMX, torch_amx, RunFacts(calibrations={"torch": PASSING}))
    assert passed.precision.as_dict() == {
        "value": "bf16",
        "reason": "the CPU has AMX, and on 6 real H&E calibration tiles of 64 px bf16 kept "
        "99.91 % of fp32's labels (needs >= 99.5 %) and moved a label's area by at most "
        "0.40 % (needs <= 1 %)",
    }
    assert json.loads(json.dumps(passed.as_dict()))["calibration"] == PASSING
    spec = runtime_spec(passed, TORCH_SPEC.geometry)
    assert (spec.precision, spec.calibration) == ("bf16", PASSING)
    assert spec.precision_reason == f"bf16: {passed.precision.reason}"
    failed = decide(AMX, torch_amx, RunFacts(calibrations={"torch": FAILING}))
    assert failed.precision.value == "fp32" and failed.calibration == FAILING
    assert failed.precision.reason.startswith("the CPU has AMX, and on 6 real H&E")
    other = decide(AMX, torch_amx, RunFacts(calibrations={"openvino": PASSING}))
    assert (other.precision.value, other.calibration) == ("bf16-if-calibrated", None)
    fixed = decide(AMX, SegmentParams(runtime="torch", precision="fp32"),
                   RunFacts(calibrations={"torch": PASSING}))  # fmt: skip
    assert (fixed.precision.value, fixed.calibration) == ("fp32", None)
