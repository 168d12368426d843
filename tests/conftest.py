"""Fixtures shared by every test package: paths to real data and a tiny model bundle."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from wsi_segment.errors import raise_terminated
from wsi_segment.models.model_files import BuiltModel
from wsi_segment.models.runtimes.spec import RuntimeSpec
from wsi_segment.pipeline.inference.engine import EngineSizes, build_executor, run_engine
from wsi_segment.pipeline.inference.engine_state import EngineStats
from wsi_segment.pipeline.inference.model_handle import LoadedModel, ModelHandle
from wsi_segment.pipeline.inference.slide_plan import slide_grid
from wsi_segment.pipeline.inference.tile_reader import tile_geometry
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.run_policy import RunFacts

if TYPE_CHECKING:
    import torch

    from wsi_segment.models.runtimes.tile_io import Executor, Geometry, ReducedOutputs
    from wsi_segment.models.segmentation_model import SegmentationModel
    from wsi_segment.pipeline.inference.engine import ReadSource
    from wsi_segment.pipeline.inference.slide_job import SlideJob
    from wsi_segment.pipeline.machine import Machine
    from wsi_segment.pipeline.outputs.chunk_summary import ChunkOutcome
    from wsi_segment.wsi.tiling import ChunkSpec

DATA_DIR = Path(__file__).resolve().parent / "data"
CMU_SLIDE = DATA_DIR / "CMU-1-Small-Region.svs"
# what a batch writes into OUT beside the slide folders (pipeline.morning_report)
MORNING_REPORT = (".report", "cohort.csv", "report.html", "qupath-project")


# the pytest-xdist group of the files whose tests use the session's Prefect test server
PREFECT_SERVER_GROUP = "prefect-server"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`make test` gives each worker whole files (`--dist loadgroup`, a group per file), and
    every file that uses the Prefect test server (`prefect_harness`) to the same worker: the
    server costs ~17 s and ~22 CPU-s to start, once per worker that asks for it."""
    files_with_server = {item.path for item in items if "prefect_harness" in item.fixturenames}
    for item in items:
        group = (
            PREFECT_SERVER_GROUP if item.path in files_with_server else item.nodeid.split("::")[0]
        )
        item.add_marker(pytest.mark.xdist_group(group))


def what_ran(precision: dict[str, object]) -> dict[str, object]:
    """summary.json `precision` without `runtime_cache`: what ran and why, not what the load
    took from the runtime cache (a cold cache, then a warm one)."""
    return {k: v for k, v in precision.items() if k != "runtime_cache"}


def without_report(names: list[str]) -> list[str]:
    """`names` (of what is in a batch's OUT) without the batch's cohort table and report."""
    return [name for name in names if name not in MORNING_REPORT]


# the cores a test's engine shares among its compute threads (what a run's plan gives as `cores`)
ENGINE_CORES = 2
# a test engine's sizes (what a run's plan decides: `EngineSizes.of`): one writer, one
# compute thread, the model's lock, no polygon processes, batches of 5 tiles; tests replace
# what they vary
ENGINE = EngineSizes(
    cores=ENGINE_CORES, writers=1, computes=1, locked=True, polygon_processes=0, batch=5
)


def engine_run(
    job: SlideJob,
    specs: Sequence[ChunkSpec],
    source: ReadSource,
    sizes: EngineSizes = ENGINE,
    stats: EngineStats | None = None,
    **kw: Any,
) -> list[ChunkOutcome]:
    """`run_engine` as a run calls it: the job's executor built as `sizes` say, then the engine
    laid out as they say (`stats`: where a test reads what it did; `kw`: progress, cancel)."""
    executor = build_executor(job.model, job.geometry, sizes)
    return run_engine(job, specs, source, executor, sizes, stats or EngineStats(), **kw)


# a local run's facts for the run policy (`decide`): one engine on the machine, the slide's
# reads not examined, no bf16 calibration known; tests replace what they vary
LOCAL_FACTS = RunFacts()
TINY_TILE = 64  # the tiles of `tiny_model_dir`'s model


def run_geometry(tile: int) -> Geometry:
    """The tile graph's geometry of a run with the default options, for a model with `tile`
    px tiles: what a plan hands the loader (`RuntimeSpec.geometry`)."""
    params = SegmentParams()
    return tile_geometry(slide_grid(tile, params), params.gate)


# what a plan hands the loader for torch at fp32 with nothing else asked (no reasons worded),
# at the tiny model's run geometry (torch opens for any; OpenVINO checks that graph); tests
# replace what they vary, as `torch_spec` does
TORCH_SPEC = RuntimeSpec(
    runtime="torch",
    precision="fp32",
    geometry=run_geometry(TINY_TILE),
    fallback="fp32",
    threads=1,
    cpu_flags=frozenset(),
    by_name=False,
    cuda_graphs=False,
    runtime_reason="",
    precision_reason="",
    fallback_reason="",
    calibration=None,
)
LUAD_CLASSES = ["TE", "NEC", "LYM", "TAS"]
LUAD_COLORS = [(205, 51, 51), (0, 255, 0), (65, 105, 225), (255, 165, 0)]


@contextlib.contextmanager
def foreground_signals() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP handled in this process, as in a terminal's foreground job,
    for the block: the code under test installs its handlers over these (an ignored signal
    it leaves ignored, as `nohup` asks), and a process started meanwhile gets their default
    actions (exec resets a handler; an ignored signal would stay ignored). CI, or a shell's
    background job, may run the tests with SIGINT or SIGHUP ignored."""
    stopping = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = {s: signal.getsignal(s) for s in stopping}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_terminated)
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def run_temp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary folder of this whole test run: the session's own, or, in a pytest-xdist
    worker (which has its own folder inside the run's), the one its workers share."""
    basetemp = tmp_path_factory.getbasetemp()
    return basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp


@pytest.fixture(scope="session", autouse=True)
def runtime_cache(tmp_path_factory) -> Iterator[Path]:
    """The OpenVINO runtime's compiled graphs go to one folder per test run (shared by its
    tests, their worker processes and the run's other pytest-xdist workers, so that a graph
    is exported and compiled once a run: the cache is safe for processes that build the same
    entry at once), never to the user's ~/.cache. Tests about the cache use their own."""
    folder = run_temp_root(tmp_path_factory) / "runtime-cache"
    folder.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WSI_SEGMENT_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A real, randomly initialised bundle (resnet10t classifier + DeepLabV3+), tile 64 at
    2 um/px so end-to-end runs take seconds. Written and loaded through models.bundle."""
    import torch

    from wsi_segment.models.bundle import save_model
    from wsi_segment.models.classifier import build_classifier
    from wsi_segment.models.meta import ModelMeta
    from wsi_segment.models.segmentation_model import SegmentationModel
    from wsi_segment.models.segmenter import build_segmenter

    torch.manual_seed(0)
    meta = ModelMeta("tiny-random", LUAD_CLASSES, LUAD_COLORS, mpp=2.0, tile_size=TINY_TILE)
    model = SegmentationModel(
        build_classifier("resnet10t", "cam", 4), build_segmenter("resnet18", 4), meta
    )
    return save_model(model, tmp_path_factory.mktemp("models") / "tiny", weights_dtype="float16")


class QuietFileHandler(http.server.SimpleHTTPRequestHandler):
    """Python's file server, without its line per request on stderr (which would land in
    the output tests read, and name every URL whole)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP by Python's own server (sizes and Last-Modified headers, as
    a plain web server gives; a URL's query is ignored, as a store ignores a signature it
    accepts): (folder, its URL)."""
    from tests.wsi.http_servers import served

    folder = tmp_path / "served"
    folder.mkdir()
    with served(folder, QuietFileHandler) as url:
        yield folder, url


def corrupt_middle_tile(src: Path, dst: Path) -> tuple[int, int]:
    """Copy of slide `src` to `dst` with the last two thirds of its middle level-0 JPEG tile
    overwritten by noise (seeded); returns that tile's level-0 (x, y)."""
    import numpy as np
    import tifffile

    with tifffile.TiffFile(src) as tf:
        page = tf.pages[0]
        i = len(page.dataoffsets) // 2
        offset, count = page.dataoffsets[i], page.databytecounts[i]
        per_row = -(-page.imagewidth // page.tilewidth)
        xy = ((i % per_row) * page.tilewidth, (i // per_row) * page.tilelength)
    data = bytearray(src.read_bytes())
    noise = np.random.default_rng(6).integers(0, 256, count - count // 3, dtype=np.uint8)
    data[offset + count // 3 : offset + count] = noise.tobytes()
    dst.write_bytes(bytes(data))
    return xy


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `path` (e.g. "size=64k": a disk that fills mid-run; "ro"), or the
    test skipped where mounting is not allowed (it needs root in a container)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def torch_spec(precision: str = "fp32", cuda_graphs: bool = False) -> RuntimeSpec:
    """A run's runtime spec for torch at `precision` (on CUDA, `cuda_graphs`: each batch a
    replay of one captured graph), as a test's plan would decide it."""
    return dataclasses.replace(
        TORCH_SPEC,
        precision=precision,
        cuda_graphs=cuda_graphs,
        runtime_reason="torch: a test's",
        precision_reason=f"{precision}: a test's",
    )


@dataclasses.dataclass(frozen=True)
class WrappedLoaded(LoadedModel):
    """A loaded model whose executors a test wraps (one tile at a time, failing, counting)."""

    wrap: Callable[[Executor], Executor] | None = None

    def executor(self, geometry: Geometry, batch: int, thread_cores: int | None) -> Executor:
        inner = super().executor(geometry, batch, thread_cores)
        return inner if self.wrap is None else self.wrap(inner)


def torch_loaded(
    model: SegmentationModel | BuiltModel,
    precision: str = "fp32",
    device: str = "cpu",
    wrap: Callable[[Executor], Executor] | None = None,
    cuda_graphs: bool = False,
) -> LoadedModel:
    """`model` (a network built in memory, or `load_bundle`'s: its identity kept) on
    `device` with torch opened at `precision` (`cuda_graphs` as `torch_spec`): what a run's
    loader gives (its executors wrapped by `wrap`, if given)."""
    from wsi_segment.models.runtimes.select import open_runtime

    source = model if isinstance(model, BuiltModel) else BuiltModel(model)
    source.network().to_device(device)
    spec = torch_spec(precision, cuda_graphs)
    return WrappedLoaded(source, open_runtime(source, spec), wrap=wrap)


def torch_handle(
    model: SegmentationModel | BuiltModel,
    name: str = "tiny",
    precision: str = "fp32",
    device: str = "cpu",
    wrap: Callable[[Executor], Executor] | None = None,
    cuda_graphs: bool = False,
) -> ModelHandle:
    """A handle around `model` loaded as `torch_loaded` does (tests' stand-in for prepare)."""
    loaded = torch_loaded(model, precision, device, wrap, cuda_graphs)
    return ModelHandle.of(loaded, name, device, torch_spec(precision, cuda_graphs))


def run_tiles(
    model: SegmentationModel,
    tiles: torch.Tensor,
    margin: int,
    core: int,
    downsample: int,
    gate: bool = True,
    precision: str = "fp32",
) -> ReducedOutputs:
    """The slide path's outputs of uint8 tiles (N, 3, T, T) by `model` (on its device) in
    torch at `precision`: its tile graph at that geometry, run by the torch executor."""
    from wsi_segment.models.runtimes.executor import TorchExecutor
    from wsi_segment.models.runtimes.tile_io import Geometry

    geometry = Geometry(int(tiles.shape[-1]), margin, core, downsample, gate)
    return TorchExecutor(model, geometry, precision).run(tiles.permute(0, 2, 3, 1))


def plan_spec(
    precision: str = "auto",
    runtime: str = "torch",
    tile: int = TINY_TILE,
    machine: Machine | None = None,
) -> RuntimeSpec:
    """The runtime spec a local CPU run's plan hands the loader for the options `--precision
    precision --runtime runtime`, for a model with `tile` px tiles, on `machine` (a
    description a test built; this machine as probed where none is given)."""
    from wsi_segment.pipeline.machine import probe_machine
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.run_policy import decide, runtime_spec

    options = SegmentParams(device="cpu", precision=precision, runtime=runtime)
    described = probe_machine() if machine is None else machine
    return runtime_spec(decide(described, options, LOCAL_FACTS), run_geometry(tile))


def calibrating_spec() -> RuntimeSpec:
    """torch at bf16-if-calibrated: what precision auto runs on a CPU with AMX."""
    return dataclasses.replace(
        TORCH_SPEC, precision="bf16-if-calibrated", precision_reason="bf16-if-calibrated"
    )
