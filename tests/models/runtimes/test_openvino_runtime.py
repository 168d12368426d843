"""The OpenVINO runtime: torch's bytes on real tiles, a cache that never trusts a bad entry,
and torch with a warning where it cannot run."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tests.conftest import TORCH_SPEC
from wsi_segment.errors import GraphNotExpressible, ModelError, RuntimeUnavailable, WsiSegmentError
from wsi_segment.models.classifier import build_classifier
from wsi_segment.models.cpu import cpu_flags
from wsi_segment.models.meta import ModelMeta
from wsi_segment.models.model_files import BuiltModel
from wsi_segment.models.precision_calibration import calibration_tiles
from wsi_segment.models.runtimes.executor import TorchExecutor
from wsi_segment.models.runtimes.openvino_runtime import OpenVINOExecutor, OpenVINOGraphs
from wsi_segment.models.runtimes.select import MIN_CHECK_LABELS, check_geometry, open_runtime
from wsi_segment.models.runtimes.spec import RuntimeSpec
from wsi_segment.models.runtimes.tile_io import Geometry
from wsi_segment.models.segmentation_model import SegmentationModel
from wsi_segment.models.segmenter import build_segmenter

TILE = 224
LUAD = Path(__file__).resolve().parents[2] / "data" / "luad-histoseg-sample"
META = ModelMeta(
    "tiny", ["TE", "NEC", "LYM", "TAS"], [(205, 51, 51), (0, 255, 0), (65, 105, 225), (255, 165, 0)],
    1.0, TILE,
)  # fmt: skip


def _model(seed: int = 0) -> SegmentationModel:
    """A real (small) DeepLabV3+ and classifier: what the agreement is claimed for."""
    torch.manual_seed(seed)
    model = SegmentationModel(
        build_classifier("resnet10t", "cam", 4),
        build_segmenter("tu-resnet10t", 4, decoder_channels=16),
        META,
    )
    return model.to_device("cpu")


class _Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3)) * 8


def _tiny(seed: int = 0) -> SegmentationModel:
    """Two convolutions: the cache's tests need a graph, not a network (fast to export)."""
    torch.manual_seed(seed)
    seg = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    return SegmentationModel(_Classifier(), seg, META).to_device("cpu")


def _tiny_source(seed: int = 0) -> BuiltModel:
    """`_tiny(seed)` as a runtime's source (a model built in memory: no identity)."""
    return BuiltModel(_tiny(seed))


def real_tiles() -> np.ndarray:
    """The 18 LUAD-HistoSeg sample patches and the 6 CMU-1 calibration tiles, (24, 3, T, T)."""
    paths = sorted(LUAD.glob("train/*.png")) + sorted(LUAD.glob("*/img/*.png"))
    luad = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    assert len(luad) == 18
    x = np.stack(luad).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(np.concatenate([x, calibration_tiles(TILE)]))


GEOMETRY = Geometry(TILE, 16, 192, 4, True)  # the slide path's, at the default overlap and d


def ov_spec(
    precision: str = "fp32", by_name: bool = False, flags: frozenset[str] | None = None
) -> RuntimeSpec:
    """OpenVINO at `precision` as a run's plan hands it to the loader."""
    why = "openvino: asked for (--runtime openvino)" if by_name else "openvino: the plan's"
    return dataclasses.replace(
        TORCH_SPEC,
        runtime="openvino",
        precision=precision,
        geometry=GEOMETRY,
        threads=torch.get_num_threads(),
        by_name=by_name,
        cpu_flags=cpu_flags() if flags is None else flags,
        runtime_reason=why,
        precision_reason=f"{precision}: the plan's",
        fallback_reason="fp32: the plan's for torch",
    )


def run(
    model: SegmentationModel | OpenVINOGraphs, x: np.ndarray, geometry=GEOMETRY, thread_cores=None
):
    """The tile graph at `geometry` of uint8 tiles (N, 3, T, T): in torch fp32 for a model,
    compiled for OpenVINO's graphs (for a thread with `thread_cores` of the cores)."""
    nhwc = np.transpose(np.asarray(x), (0, 2, 3, 1))
    if isinstance(model, OpenVINOGraphs):
        return OpenVINOExecutor(model, geometry, thread_cores).run(nhwc)
    return TorchExecutor(model, geometry, "fp32").run(nhwc)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's cache, holding `_tiny()`'s exported graph at GEOMETRY (compiled nothing)."""
    folder = tmp_path_factory.mktemp("runtime-cache")
    OpenVINOGraphs(_tiny_source(), "fp32", 2, cpu_flags(), folder).exported_graph(GEOMETRY)
    return folder


def with_tiny_graph(cache: Path, name: str) -> Path:
    """A fresh cache `cache / name` holding only `_tiny()`'s exported graph (copied from the
    module's cache): its tests are about compiled graphs (blobs), so they need not export
    that graph again; the graph's key holds no precision, threads or CPU."""
    import json
    import shutil

    from wsi_segment.models.runtimes.openvino_runtime import weights_digest

    folder = cache / name
    folder.mkdir()
    digest = weights_digest(_tiny_source())
    for manifest in cache.glob("*.json"):
        key = json.loads(manifest.read_text())["key"]
        if key["kind"] == "graph" and key["model"] == digest:
            for part in cache.glob(f"{manifest.stem}.*"):
                shutil.copy2(part, folder / part.name)
    assert len(list(folder.iterdir())) == 3  # the graph's manifest, xml and bin
    return folder


def _outputs(
    model: SegmentationModel | OpenVINOGraphs, x: np.ndarray, thread_cores: int | None = None
) -> list[np.ndarray]:
    out = run(model, x, thread_cores=thread_cores)
    return [out.probs, out.labels, out.cls_probs]


def test_fp32_gives_torchs_labels_and_probabilities_on_real_tiles(cache: Path) -> None:
    """Exact on labels and on the stored uint8 probabilities, for the slide path's geometry
    and for whole tiles (what evaluate scores); classifier probabilities to float rounding."""
    model = _model()
    graphs = OpenVINOGraphs(BuiltModel(model), "fp32", 2, cpu_flags(), cache)
    x = real_tiles()
    ref = run(model, x)
    got = run(graphs, x)
    np.testing.assert_array_equal(got.labels, ref.labels)
    np.testing.assert_array_equal(got.probs, ref.probs)
    assert got.probs.dtype == np.uint8 and got.labels.dtype == np.uint8
    np.testing.assert_allclose(got.cls_probs, ref.cls_probs, atol=1e-5, rtol=0)
    assert graphs.builds == 1


def test_a_second_load_reads_the_cache_and_gives_the_same_bytes(cache: Path) -> None:
    x = real_tiles()[:16]
    first = OpenVINOGraphs(_tiny_source(), "fp32", 2, cpu_flags(), cache)
    a = _outputs(first, x)
    ref = _outputs(_tiny(), x)
    assert all(np.array_equal(p, q) for p, q in zip(a[:2], ref[:2], strict=True))
    second = OpenVINOGraphs(
        _tiny_source(), "fp32", 2, cpu_flags(), cache
    )  # another load, same bytes
    b = _outputs(second, x)
    assert second.builds == 0 and second.cache_hits == 1
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))


def test_a_damaged_entry_is_rebuilt_and_keys_change_with_what_changes_the_result(
    cache: Path,
) -> None:
    x = real_tiles()[:16]
    cache = with_tiny_graph(cache, "damage")
    reference = _outputs(OpenVINOGraphs(_tiny_source(), "fp32", 2, cpu_flags(), cache), x)
    blobs_before = set(cache.glob("*.blob"))
    assert len(blobs_before) == 1
    for blob in blobs_before:  # every compiled graph of this cache damaged
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
    again = OpenVINOGraphs(_tiny_source(), "fp32", 2, cpu_flags(), cache)
    assert all(np.array_equal(p, q) for p, q in zip(reference, _outputs(again, x), strict=True))
    assert again.builds == 1 and again.cache_hits == 0
    assert set(cache.glob("*.blob")) == blobs_before  # replaced in place
    for other in (
        OpenVINOGraphs(_tiny_source(), "fp32", 1, cpu_flags(), cache),  # threads
        OpenVINOGraphs(_tiny_source(), "bf16", 2, cpu_flags(), cache),  # precision
        OpenVINOGraphs(_tiny_source(seed=1), "fp32", 2, cpu_flags(), cache),  # weights
    ):
        _outputs(other, x)
        assert other.builds == 1 and other.cache_hits == 0
    assert len(set(cache.glob("*.blob")) - blobs_before) == 3


def test_an_isa_cap_is_part_of_the_key(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run capped to AVX2 (OV_CPU_MAX_ISA, ONEDNN_MAX_CPU_ISA) never loads a blob compiled
    for the whole CPU, nor the other way round."""
    x = real_tiles()[:2]
    cache = with_tiny_graph(cache, "caps")
    _outputs(OpenVINOGraphs(_tiny_source(), "fp32", 2, cpu_flags(), cache), x)
    for variable in ("OV_CPU_MAX_ISA", "ONEDNN_MAX_CPU_ISA"):
        with monkeypatch.context() as env:
            env.setenv(variable, "AVX2")
            capped = OpenVINOGraphs(_tiny_source(), "fp32", 2, cpu_flags(), cache)
            _outputs(capped, x)
            assert capped.builds == 1 and capped.cache_hits == 0, variable
    whole = OpenVINOGraphs(_tiny_source(), "fp32", 2, cpu_flags(), cache)
    _outputs(whole, x)
    assert whole.builds == 0 and whole.cache_hits == 1


def test_compute_threads_run_side_by_side_in_streams_of_their_share(cache: Path) -> None:
    """As in torch, each of the engine's compute threads runs on its share of the cores: a
    thread with one of the graphs' two threads runs in a graph of two streams (two such
    threads at once, not in turn), a thread of all cores in one stream; the same bytes."""
    x = real_tiles()[:4]
    graphs = OpenVINOGraphs(
        _tiny_source(), "fp32", 2, cpu_flags(), with_tiny_graph(cache, "streams")
    )
    shared: list[list[np.ndarray]] = []

    def one_core() -> None:  # a compute thread of two on two cores
        shared.append(_outputs(graphs, x, thread_cores=1))

    whole = _outputs(graphs, x, thread_cores=2)
    threads = [threading.Thread(target=one_core) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    built = graphs.builds
    for streams in (1, 2):  # compiled by the runs above: read back, not built again
        compiled = graphs.compiled(GEOMETRY, len(x), streams)
        assert int(compiled.get_property("NUM_STREAMS")) == streams
        assert not compiled.get_property("ENABLE_CPU_PINNING")
    assert graphs.builds == built == 2 and graphs.cache_hits == 0
    assert len(shared) == 2
    for outputs in shared:
        assert all(np.array_equal(p, q) for p, q in zip(whole, outputs, strict=True))


THREADS_AT_ONCE = """
import os, sys, threading
from pathlib import Path
import torch
from tests.models.runtimes.test_openvino_runtime import TILE, _tiny_source
from wsi_segment.models.cpu import cpu_flags
from wsi_segment.models.runtimes.tile_io import Geometry
from wsi_segment.models.runtimes.openvino_runtime import OpenVINOGraphs

graphs = OpenVINOGraphs(_tiny_source(), "fp32", 1, cpu_flags(), Path(sys.argv[1]))
x = torch.full((2, TILE, TILE, 3), 128, dtype=torch.uint8)
start = threading.Barrier(int(sys.argv[2]))
def infer():
    start.wait()
    graphs.run(x, Geometry(TILE, 16, 192, 4, True), 1)
threads = [threading.Thread(target=infer, daemon=True) for _ in range(start.parties)]
for t in threads:
    t.start()
for t in threads:
    t.join(60)
os._exit(3 if any(t.is_alive() for t in threads) else 0)
"""


@pytest.mark.slow  # three fresh interpreters compiling OpenVINO
def test_threads_whose_first_inference_is_at_once_do_not_deadlock(cache: Path) -> None:
    """A run's compute threads with a warm cache (no forward at load) met in OpenVINO's first
    numpy conversion at once and hung for good (pybind11's npy_api guard against the GIL);
    a fresh process each try, since the bridge is set up once a process. The cache is warmed
    here: the bridge of this process is not the tries'."""
    import subprocess
    import sys

    folder = cache / "threads"
    repo = Path(__file__).resolve().parents[3]
    warm = OpenVINOGraphs(_tiny_source(), "fp32", 1, cpu_flags(), folder)
    run(warm, torch.full((2, 3, TILE, TILE), 128, dtype=torch.uint8))
    assert warm.builds == 1
    argv = [sys.executable, "-c", THREADS_AT_ONCE, str(folder), "4"]
    for _ in range(3):
        # a hang holds the GIL, so the script cannot time itself out: its parent does
        done = subprocess.run(argv, cwd=repo, timeout=120)
        assert done.returncode == 0, "threads hung in their first inference"


SIGNAL_AFTER_FREEING = """
import gc, os, signal, sys
from pathlib import Path
import torch
from tests.models.runtimes.test_openvino_runtime import TILE, _tiny_source
from wsi_segment.models.cpu import cpu_flags
from wsi_segment.models.runtimes.tile_io import Geometry
from wsi_segment.models.runtimes.openvino_runtime import OpenVINOGraphs

x = torch.full((2, TILE, TILE, 3), 128, dtype=torch.uint8)
made = [OpenVINOGraphs(_tiny_source(seed=s), "fp32", 1, cpu_flags(), Path(sys.argv[1])) for s in (0, 1)]
for graphs in made:
    graphs.run(x, Geometry(TILE, 16, 192, 4, True), 1)
del graphs
while made:
    del made[0]  # freed in the order made, as one slide's model then another's
    gc.collect()
signal.signal(signal.SIGINT, lambda signum, frame: print("handled"))
os.kill(os.getpid(), signal.SIGINT)
"""


def test_a_signal_after_graphs_were_freed_is_handled_not_a_crash(cache: Path) -> None:
    """Graphs compiled then freed in the order made, then a signal (Ctrl-C between the
    slides of a batch): one Core per graph left the thread a freed signal stack and the
    process died of SIGSEGV (-11); with the process's one Core the handler runs."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[3]
    argv = [sys.executable, "-c", SIGNAL_AFTER_FREEING, str(cache / "signal")]
    done = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "handled", done.stderr


class _Branchy(nn.Module):
    """A segmenter whose path depends on the data: torch.export cannot express it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.mean()) > 0.5:
            return self.conv(x)
        return -self.conv(x)


def test_a_graph_openvino_cannot_express_runs_in_torch_under_auto_and_is_refused_by_name(
    cache: Path,
) -> None:
    torch.manual_seed(0)
    model = SegmentationModel(_Classifier(), _Branchy(), META)
    model.to_device("cpu")
    choice = open_runtime(BuiltModel(model), ov_spec(), cache)
    assert choice.runtime == "torch" and choice.graphs is None
    assert choice.reason.startswith("torch: the model's graph cannot be exported to OpenVINO")
    assert choice.warning is not None and choice.warning.endswith("; ran in torch")
    with pytest.raises(ModelError, match=r"cannot be exported to OpenVINO .*use --runtime torch"):
        open_runtime(BuiltModel(model), ov_spec(by_name=True), cache)


def test_what_openvino_cannot_run_is_an_error_of_the_one_hierarchy(cache: Path) -> None:
    """Where the export fails, the error is a ModelError (wsi_segment.errors), not a bare
    RuntimeError: should one ever escape the fallback, it is reported as an expected error."""
    torch.manual_seed(0)
    model = SegmentationModel(_Classifier(), _Branchy(), META).to_device("cpu")
    graphs = OpenVINOGraphs(BuiltModel(model), "fp32", 1, cpu_flags(), cache)
    with pytest.raises(GraphNotExpressible) as info:
        graphs.exported_graph(GEOMETRY)
    assert isinstance(info.value, ModelError) and not isinstance(info.value, RuntimeError)
    assert issubclass(RuntimeUnavailable, WsiSegmentError)
    assert not issubclass(RuntimeUnavailable, RuntimeError)


def test_where_openvino_cannot_run_torch_runs_the_plans_precision_for_torch(
    cache: Path,
) -> None:
    """The plan decided OpenVINO at its precision, and torch's precision should OpenVINO not
    run the model (`RuntimeSpec.fallback`); a graph OpenVINO cannot express runs in torch at
    that precision, not at OpenVINO's (no OpenVINO calibration, nothing decided again)."""
    torch.manual_seed(0)
    model = SegmentationModel(_Classifier(), _Branchy(), META).to_device("cpu")
    spec = dataclasses.replace(ov_spec("bf16-if-calibrated"), fallback="fp32")
    report = open_runtime(BuiltModel(model), spec, cache).report()
    assert report["runtime"] == "torch" and report["calibration"] is None
    assert (report["autocast"], report["reason"]) == ("fp32", "fp32: the plan's for torch")
    spec = dataclasses.replace(spec, fallback="bf16-if-calibrated")  # torch on AMX: calibrated
    report = open_runtime(BuiltModel(model), spec, cache).report()
    assert report["runtime"] == "torch" and isinstance(report["calibration"], dict)


def test_open_runtime_opens_openvino_and_says_why(cache: Path) -> None:
    model = _tiny()
    report = open_runtime(BuiltModel(model), ov_spec(by_name=True), cache).report()
    assert report["runtime"] == "openvino" and report["autocast"] == "fp32"
    assert report["runtime_reason"] == "openvino: asked for (--runtime openvino)"
    # fp32 in another library sums in another order: a label flips only at a near-tie of
    # the fp32 probabilities (this random two-conv net has some; the DeepLabV3+ above none)
    agreement = report["runtime_fp32_agreement"]
    assert isinstance(agreement, float) and 0.99999 <= agreement <= 1.0
    assert report["runtime_warning"] is None
    x = real_tiles()[:16]
    ref = run(_tiny(), x)
    executor = open_runtime(BuiltModel(model), ov_spec(by_name=True), cache).executor(GEOMETRY, 16)
    same = float(np.mean(executor.run(x.transpose(0, 2, 3, 1)).labels == ref.labels))
    assert same >= 0.99999


def test_a_cache_that_cannot_be_written_costs_only_time(cache: Path, tmp_path: Path) -> None:
    """Same bytes as a cached run: both compile the graph from its saved form."""
    x = real_tiles()[:16]
    cached = _outputs(OpenVINOGraphs(_tiny_source(), "fp32", 2, cpu_flags(), cache), x)
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    uncached = OpenVINOGraphs(_tiny_source(), "fp32", 2, cpu_flags(), blocker / "cache")
    got = _outputs(uncached, x)
    assert uncached.builds == 1 and not (blocker / "cache").exists()
    assert all(np.array_equal(p, q) for p, q in zip(cached, got, strict=True))


def test_models_loading_side_by_side_both_export(tmp_path: Path) -> None:
    """Slides of a batch load their models in threads at once; torch.export's tracing state
    is process-wide, so exports take turns (without: one fails, and runs in torch)."""
    import threading

    x = real_tiles()[:4]
    results: dict[int, object] = {}

    def load(seed: int) -> None:
        graphs = OpenVINOGraphs(_tiny_source(seed), "fp32", 2, cpu_flags(), tmp_path)
        try:
            results[seed] = _outputs(graphs, x)
        except Exception as exc:
            results[seed] = exc

    threads = [threading.Thread(target=load, args=(seed,)) for seed in (3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, list) for r in results.values()), results


def test_a_warm_cache_opens_openvino_without_a_forward_or_a_calibration_graph(
    tmp_path: Path,
) -> None:
    """The checks' numbers are kept beside the graphs: a second load runs no torch forward,
    compiles no graph and gets the same verdict; a damaged verdict is checked again. The
    graphs the checks compiled (the calibration batch) are not kept past the load."""
    model = _tiny()
    # bf16 is a candidate under auto (a CPU with AMX): both checks run
    spec = ov_spec("bf16-if-calibrated", flags=cpu_flags() | {"amx_bf16"})
    first = open_runtime(BuiltModel(model), spec, tmp_path)
    assert first.checks_computed == 2 and first.calibration is not None
    assert first.graphs is not None and first.graphs.builds >= 1
    # the graph of the check the kept graphs ran is read from the disk again, not from memory:
    # bf16's calibration (whole tiles) where bf16 kept the labels, else the fp32 check's.
    # Which one depends on the CPU's bf16 arithmetic (none without bf16 hardware: OpenVINO
    # then runs its bf16 graph in fp32), and both are the same claim
    tiles = first.calibration.tiles
    checked = {"bf16": Geometry.whole(TILE), "fp32": check_geometry(spec.geometry, tiles)}
    hits = first.graphs.cache_hits
    first.graphs.compiled(checked[first.graphs.precision], tiles, 1)
    assert first.graphs.cache_hits == hits + 1
    forwards: list[int] = []
    model.segmenter.register_forward_hook(lambda *_: forwards.append(1))
    second = open_runtime(BuiltModel(model), spec, tmp_path)
    assert second.checks_computed == 0 and forwards == []
    assert second.graphs is not None and second.graphs.builds + second.graphs.cache_hits == 0
    assert second.fp32_agreement == first.fp32_agreement
    assert second.calibration == first.calibration
    assert (second.precision, second.precision_reason) == (first.precision, first.precision_reason)
    verdicts = sorted(tmp_path.glob("*.verdict"))
    assert len(verdicts) == 2
    # fp32 against torch on the slide's graph; bf16 against fp32 on whole tiles (its measure)
    checked = {k["check"]: k["geometry"] for k in _cached(tmp_path, "verdict")}
    assert checked == {
        "fp32_agreement": GEOMETRY.key(),
        "bf16_calibration": Geometry.whole(TILE, True).key(),
    }
    for path in verdicts:
        path.write_text(path.read_text().replace("agreement", "agreemenT"))
    third = open_runtime(BuiltModel(model), spec, tmp_path)
    assert third.checks_computed == 2 and len(forwards) == 1  # the torch fp32 forward
    assert third.calibration == first.calibration
    assert third.fp32_agreement == first.fp32_agreement


def test_the_plans_decision_is_opened_as_decided(cache: Path) -> None:
    """A run hands its plan's runtime and reason to the loader, which decides nothing again:
    OpenVINO where the plan says so; torch where it decided torch (the reason kept, and a
    warning where OpenVINO was asked for by name)."""
    model = _tiny()
    opened = open_runtime(BuiltModel(model), ov_spec(), cache)
    assert (opened.runtime, opened.report()["runtime_reason"]) == (
        "openvino",
        "openvino: the plan's",
    )
    why = "torch: asked for OpenVINO, but it cannot be imported here"
    torch_spec = dataclasses.replace(TORCH_SPEC, runtime_reason=why)
    decided = open_runtime(BuiltModel(model), torch_spec, cache)
    assert (decided.runtime, decided.reason, decided.warning) == ("torch", why, None)
    named = open_runtime(BuiltModel(model), dataclasses.replace(torch_spec, by_name=True), cache)
    assert named.runtime == "torch" and named.warning == why  # asked for by name


def _cached(folder: Path, kind: str) -> list[dict]:
    """The keys of the cache entries of `kind` in `folder` (graph | compiled | verdict)."""
    import json

    keys = [json.loads(m.read_text())["key"] for m in folder.glob("*.json")]
    return [k for k in keys if k["kind"] == kind]


def test_a_cold_open_exports_only_the_slides_graph_and_the_run_compiles_it(
    tmp_path: Path,
) -> None:
    """The fp32 check runs the graph the slide runs (its geometry): a cold open exports that
    one graph, not also one of whole tiles, and the run's executor builds from it. The check
    holds for its geometry only: another geometry is checked (and exported) again."""
    model = _tiny()
    opened = open_runtime(BuiltModel(model), ov_spec(), tmp_path)
    assert [k["geometry"] for k in _cached(tmp_path, "graph")] == [GEOMETRY.key()]
    assert [k["geometry"] for k in _cached(tmp_path, "verdict")] == [GEOMETRY.key()]
    x = real_tiles()[:8]
    got = opened.executor(GEOMETRY, 8).run(x.transpose(0, 2, 3, 1))
    assert len(_cached(tmp_path, "graph")) == 1  # compiled from the check's export
    ref = run(_tiny(), x)
    assert float(np.mean(got.labels == ref.labels)) >= 0.99999
    other = Geometry(TILE, 32, 160, 2, True)
    again = open_runtime(
        BuiltModel(model), dataclasses.replace(ov_spec(), geometry=other), tmp_path
    )
    assert again.checks_computed == 1
    assert sorted(k["geometry"] for k in _cached(tmp_path, "verdict")) == sorted(
        [GEOMETRY.key(), other.key()]
    )


def test_the_check_runs_the_slides_graph_unless_its_labels_are_too_few() -> None:
    """The fp32 check's 99.5 % must not fail on one near-tie label: at 64x downsample a tile
    has 3 x 3 labels (6 tiles: 54), so such a run is checked on whole tiles instead."""
    assert GEOMETRY.core // GEOMETRY.downsample == 48  # 2,304 labels a tile
    assert MIN_CHECK_LABELS == 10_000
    assert check_geometry(GEOMETRY, 5) == GEOMETRY  # 11,520 labels
    assert check_geometry(GEOMETRY, 4) == Geometry.whole(TILE, True)  # 9,216
    coarse = Geometry(TILE, 16, 192, 64, False)
    assert check_geometry(coarse, 9) == Geometry.whole(TILE, False)  # the run's gate


def test_a_process_opens_a_model_once_for_all_its_geometries() -> None:
    """Slides with other options in one process (a batch, a Dask worker) share one loaded
    model, its copy and its lock (`model_handle.ProcessModels` keys on the spec's
    `load_key`)."""
    other = dataclasses.replace(ov_spec(), geometry=Geometry(TILE, 32, 160, 2, True))
    assert other == ov_spec() and hash(other) == hash(ov_spec())


@pytest.fixture
def full_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder on an 8 KiB file system (a full home quota, in the small)."""
    from tests.conftest import tmpfs

    with tmpfs(tmp_path / "full", "size=8k") as folder:
        yield folder


def test_a_cache_on_a_full_file_system_costs_only_time(cache: Path, full_folder: Path) -> None:
    """OpenVINO raises RuntimeError (`basic_ios::clear: iostream error`) for a graph it cannot
    write: the run ended in a traceback where the docs promised a rebuild. Now the graph is
    compiled from a temporary copy, with the same bytes as a cached run's."""
    x = real_tiles()[:16]
    cached = _outputs(OpenVINOGraphs(_tiny_source(), "fp32", 2, cpu_flags(), cache), x)
    uncached = OpenVINOGraphs(_tiny_source(), "fp32", 2, cpu_flags(), full_folder / "cache")
    got = _outputs(uncached, x)
    assert uncached.builds == 1
    assert all(np.array_equal(p, q) for p, q in zip(cached, got, strict=True))
