"""A rerun of a finished slide is decided up to date before anything loads (no torch, no
process, no `prepare`), and every change the fingerprint covers still makes it a new run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.wsi import qupath_exports as qp
from wsi_segment.errors import OutputError
from wsi_segment.pipeline import segment
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.synthetic.slides import write_synthetic_slide


@dataclass
class Finished:
    slide: Path
    out: Path
    params: SegmentParams
    result: segment.SlideResult


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Finished:
    """One finished run of a small synthetic slide, with its own copy of the model (without
    the weights' sha256 in model.json, so a test can change the weights alone) and a ROI."""
    tmp = tmp_path_factory.mktemp("up-to-date")
    slide = tmp / "slide.svs"
    write_synthetic_slide(slide, 1024, 768, mpp=1.0, seed=3)
    model = tmp / "model"
    shutil.copytree(tiny_model_dir, model)
    doc = json.loads((model / "model.json").read_text())
    del doc["weights"]["sha256"]
    (model / "model.json").write_text(json.dumps(doc, indent=2))
    roi = qp.export(tmp / "roi.geojson", [qp.annotation(qp.rect(0, 0, 900, 700), "r")])
    # torch: a new model.json is a new identity, which OpenVINO would export again (the
    # runtime choice has its own tests)
    params = SegmentParams(
        model_dir=model, device="cpu", precision="fp32", runtime="torch", roi=roi
    )
    result = segment.segment_slide(slide, tmp / "out", params)
    assert result.status == "done"
    return Finished(slide, tmp / "out", params, result)


def recording_stages(prepared: list[str]) -> segment.Stages:
    """The plain stages, with `prepare` recording each slide it is asked to prepare."""

    def prepare(path: str, root: str | Path, params: SegmentParams) -> segment.PreparedSlide:
        prepared.append(path)
        return segment.prepare(path, root, params)

    return segment.Stages(prepare, lambda prep, work: segment.infer(prep, work), segment.finish)


def fresh_cli(finished: Finished, *extra: str) -> subprocess.CompletedProcess[str]:
    """The CLI over the finished slide in a fresh interpreter, as a nightly rerun starts; its
    last line: the exit code, whether torch was imported, the processes it left running."""
    code = (
        "import sys, psutil\n"
        "from wsi_segment.flows.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print(code, 'torch' in sys.modules, len(psutil.Process().children(recursive=True)))\n"
    )
    p = finished.params
    args = [str(finished.slide), "--out", str(finished.out), "--model", str(p.model_dir)]
    args += ["--device", "cpu", "--precision", "fp32", "--roi", str(p.roi), "--quiet"]
    args += ["--runtime", p.runtime, *extra]
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


def test_a_rerun_loads_nothing_and_starts_no_process(finished: Finished) -> None:
    """The CLI reports the slide up to date without importing torch (so no model loaded) or
    starting any process."""
    run = fresh_cli(finished)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[-1] == "0 False 0"
    assert (
        lines[0]
        == f"{finished.slide}: up to date in {finished.result.out_dir} (use --overwrite to redo)"
    )


def test_a_rerun_with_other_parameters_is_refused_before_the_model_loads(finished: Finished):
    """Without --overwrite, another run's finished output is refused at once: one error line
    naming the folder and the fix, a non-zero exit, no torch imported, the output untouched."""
    summary = finished.result.out_dir / "summary.json"
    mtime = summary.stat().st_mtime_ns
    run = fresh_cli(finished, "--overlap", "16")
    code, torch_loaded, children = run.stdout.strip().splitlines()[-1].split()
    assert code != "0" and torch_loaded == "False" and children == "0", run.stderr
    assert f"{finished.result.out_dir} holds results of a different run" in run.stderr
    assert "pass --overwrite" in run.stderr
    assert summary.stat().st_mtime_ns == mtime


def test_another_slide_of_the_same_name_is_named_not_offered_to_overwrite(
    finished: Finished, tmp_path: Path
) -> None:
    """Two folders' `slide.svs` into one --out: the refusal blamed "other model or
    parameters" and offered --overwrite, which replaced the other slide's results. It names
    the slide there and the fix; the same slide reached by a link is still this slide."""
    other = tmp_path / "elsewhere" / "slide.svs"
    other.parent.mkdir()
    write_synthetic_slide(other, 1024, 768, mpp=1.0, seed=4)
    summary = finished.result.out_dir / "summary.json"
    before = summary.read_bytes()
    with pytest.raises(OutputError) as err:
        segment.segment_slide(other, finished.out, finished.params)
    assert str(err.value) == (
        f"{finished.result.out_dir} holds the results of another slide of that name, "
        f"{finished.slide.resolve()}; choose another --out for this one, or list it in a "
        "`wsi-segment batch` manifest with another output name in the 'name' column "
        "(--overwrite would replace the other slide's results)"
    )
    link = tmp_path / "link" / "slide.svs"
    link.parent.mkdir()
    link.symlink_to(finished.slide)
    with pytest.raises(OutputError, match="holds results of a different run"):
        segment.segment_slide(link, finished.out, replace(finished.params, overlap=16))
    assert summary.read_bytes() == before


def test_summary_records_the_slide_s_absolute_path(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slide given by a relative path was recorded as given (`slides/x.svs`), which means
    nothing without the directory the run started in: cohort.csv's slide_path mixed such
    paths with absolute ones, and a rerun could not tell its slide from another."""
    slide = tmp_path / "slides" / "x.svs"
    slide.parent.mkdir()
    write_synthetic_slide(slide, 512, 384, mpp=1.0, seed=5)
    monkeypatch.chdir(tmp_path)
    params = SegmentParams(model_dir=tiny_model_dir, device="cpu", tissue="all")
    result = segment.segment_slide("slides/x.svs", "out", params)
    assert result.summary["slide"]["path"] == str(slide)
    with pytest.raises(OutputError, match="holds results of a different run"):
        segment.segment_slide("slides/x.svs", "out", replace(params, overlap=16))


def test_a_rerun_is_up_to_date_without_prepare(finished: Finished) -> None:
    summary = finished.result.out_dir / "summary.json"
    mtime = summary.stat().st_mtime_ns
    prepared: list[str] = []
    again = segment.run_stages(
        finished.slide, finished.out, finished.params, recording_stages(prepared)
    )
    assert prepared == []
    assert again.status == "up-to-date" and again.out_dir == finished.result.out_dir
    assert again.summary == json.loads(summary.read_text())
    assert 0 < again.seconds < 60  # the time the check took, shown in the batch table
    assert summary.stat().st_mtime_ns == mtime


@contextmanager
def restored(path: Path) -> Iterator[None]:
    """Put the file's bytes and times back after the test changed them."""
    data, st = path.read_bytes(), path.stat()
    try:
        yield
    finally:
        path.write_bytes(data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def assert_new_run(finished: Finished, params: SegmentParams, why: str = "") -> None:
    """Not up to date: the finished output of another run is refused before `prepare` (no
    model loads for a run that cannot write), saying `why`, and with --overwrite the run
    prepares."""
    prepared: list[str] = []
    with pytest.raises(OutputError, match="different run") as refused:
        segment.run_stages(finished.slide, finished.out, params, recording_stages(prepared))
    assert f"different run ({why}" in str(refused.value), str(refused.value)
    assert prepared == []
    overwrite = replace(params, overwrite=True)
    assert segment.up_to_date_result(finished.slide, finished.out, overwrite) is None


# a slide or --roi file rewritten in place: what the summary recorded of the run matches
SAME_MODEL_AND_PARAMETERS = (
    "the same model and parameters: the slide file changed since (its size or modification "
    "time), or the --roi file's contents"
)


def test_changed_parameters_are_a_new_run(finished: Finished) -> None:
    assert_new_run(
        finished, replace(finished.params, overlap=16), "other parameters: overlap 32 -> 16)"
    )
    assert_new_run(
        finished, replace(finished.params, gate=False), "other parameters: gate True -> False)"
    )


def test_changed_weights_are_a_new_run(finished: Finished) -> None:
    """Same model.json, one weight byte changed: the identity hashes the weights' bytes."""
    weights = Path(finished.params.model_dir or "") / "model.safetensors"
    with restored(weights):
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1  # the last tensor's last byte: still a valid file, another model
        weights.write_bytes(bytes(data))
        assert_new_run(finished, finished.params, "another model: its files' sha256 differ)")


def test_changed_model_json_is_a_new_run(finished: Finished) -> None:
    meta = Path(finished.params.model_dir or "") / "model.json"
    with restored(meta):
        meta.write_text(meta.read_text() + "\n")  # the same description, other bytes
        assert_new_run(finished, finished.params, "another model")


def test_changed_slide_is_a_new_run(finished: Finished) -> None:
    """A slide rewritten in place: its size and mtime are its identity."""
    with restored(finished.slide):
        st = finished.slide.stat()
        os.utime(finished.slide, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        assert_new_run(finished, finished.params, SAME_MODEL_AND_PARAMETERS)


def test_changed_roi_is_a_new_run(finished: Finished) -> None:
    roi = Path(finished.params.roi or "")
    with restored(roi):
        qp.export(roi, [qp.annotation(qp.rect(0, 0, 800, 700), "r")])
        assert_new_run(finished, finished.params, SAME_MODEL_AND_PARAMETERS)


def test_a_missing_model_is_reported_not_skipped(finished: Finished, tmp_path: Path) -> None:
    """The early check cannot hash a model that is not there: `prepare` names the folder."""
    from wsi_segment.errors import ModelError

    params = replace(finished.params, model_dir=tmp_path / "nowhere")
    with pytest.raises(ModelError, match="nowhere"):
        segment.segment_slide(finished.slide, finished.out, params)


def test_an_output_of_the_previous_format_is_a_new_run(
    finished: Finished, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished output written by the version before run-derived GeoJSON ids (format 5,
    where a region's feature carried the user's object id) is stale for the same slide,
    model and parameters."""
    from wsi_segment.models.meta import model_files_identity
    from wsi_segment.pipeline.outputs import run_identity

    assert run_identity.FORMAT_VERSION == 6
    summary = finished.result.out_dir / "summary.json"
    model_hash, meta = model_files_identity(Path(finished.params.model_dir or ""))
    fingerprint = run_identity.run_fingerprint(
        str(finished.slide), model_hash, finished.params, meta
    )
    assert fingerprint == finished.result.summary["fingerprint"]
    with monkeypatch.context() as m:
        m.setattr(run_identity, "FORMAT_VERSION", 5)
        old = run_identity.run_fingerprint(str(finished.slide), model_hash, finished.params, meta)
    with restored(summary):
        doc = json.loads(summary.read_text())
        doc["fingerprint"] = old
        summary.write_text(json.dumps(doc))
        assert_new_run(finished, finished.params)
