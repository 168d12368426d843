"""`wsi-segment SLIDE ...` as users call it: a real subprocess, exit codes, messages."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CMU_SLIDE, DATA_DIR


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wsi_segment.flows.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess:
    """`flows.cli.main` in this process (the same dispatcher as the console script) where the
    test's subject is not the process: no interpreter and torch import per call."""
    from wsi_segment.flows.cli import main

    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


@pytest.mark.slow  # tests/reliability/test_bad_slides' one CLI run covers good and broken slides
def test_good_and_broken_slides_in_one_call(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    args = ["--model", str(tiny_model_dir), "--out", str(out), "--quiet"]
    args += ["--runtime", "torch"]  # a broken slide beside a good one, not the runtime choice
    speed = ["--chunk-tiles", "2", "--batch-size", "3"]  # speed knobs reach the run
    first = run_cli(str(CMU_SLIDE), str(DATA_DIR / "broken.svs"), *args, *speed)
    assert first.returncode == 1
    errors = [line for line in first.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:") and "broken.svs" in errors[0]
    assert "Traceback" not in first.stderr
    summary = json.loads((out / "CMU-1-Small-Region" / "summary.json").read_text())
    assert summary["parameters"]["chunk_tiles"] == 2 and summary["parameters"]["batch_size"] == 3
    assert not (out / "broken").exists()
    # The same call again: the finished slide is up to date, `segment` is the same command.
    second = run_cli("segment", str(CMU_SLIDE), *args)
    assert second.returncode == 0
    assert "up to date" in second.stdout


def test_usage_errors_exit_2_with_the_range(tmp_path):
    result = run_cli(str(CMU_SLIDE), "--batch-size", "0", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "[1, 4096]" in result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["segment", "batch"])
@pytest.mark.parametrize(
    ("out", "shown"), [("o/nl\nx", "\\n"), ("o/\tx", "\\t"), ("o\x1b[2J", "\\x1b")]
)
def test_an_output_folder_with_control_characters_is_a_usage_error(
    tmp_path, capsys, command, out, shown
):
    """`--out` with a line break, tab or escape: refused as slide names with them are, one
    line naming it escaped, exit 2, nothing made (it would split every `done` line)."""
    from wsi_segment.flows.cli import build_parser

    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args([command, str(CMU_SLIDE), "--out", str(tmp_path / out)])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith(f"wsi-segment {command}: error: argument --out: '")
    assert f"holds control characters ({shown})" in error
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("out", ["résultats", "out put", "o/ok-1.2"])
def test_an_ordinary_output_folder_is_taken_as_given(tmp_path, out):
    from wsi_segment.flows.cli import build_parser

    args = build_parser().parse_args(["segment", str(CMU_SLIDE), "--out", str(tmp_path / out)])
    assert args.out == tmp_path / out


def test_tissue_and_roi_options_reach_the_batch_flow(tmp_path):
    """`batch` passes --tissue/--roi through the flow's JSON options back into SegmentParams."""
    from wsi_segment.flows.cli import build_parser
    from wsi_segment.flows.cli_batch import flow_options
    from wsi_segment.flows.cli_segment import params_from_args
    from wsi_segment.flows.slide_flow import make_params

    roi = tmp_path / "regions.geojson"
    args = build_parser().parse_args(["batch", str(tmp_path), "--tissue", "all", "--roi", str(roi)])
    options = json.loads(
        json.dumps(flow_options(params_from_args(args)), default=str)
    )  # as a deployment stores it
    params = make_params(None, options)
    assert params.tissue == "all" and params.roi == roi
    assert params.fingerprint_fields()["tissue"] == "all"


def test_runtime_option_reaches_the_params_and_the_batch_flow(tmp_path):
    from wsi_segment.flows.cli import build_parser
    from wsi_segment.flows.cli_batch import flow_options
    from wsi_segment.flows.cli_segment import params_from_args
    from wsi_segment.flows.slide_flow import make_params

    parser = build_parser()
    assert params_from_args(parser.parse_args(["segment", "s.svs"])).runtime == "auto"
    args = parser.parse_args(["segment", "s.svs", "--runtime", "torch"])
    assert params_from_args(args).runtime == "torch"
    args = parser.parse_args(["batch", str(tmp_path), "--runtime", "openvino"])
    options = json.loads(json.dumps(flow_options(params_from_args(args)), default=str))
    assert make_params(None, options).runtime == "openvino"


def test_decoders_change_speed_not_results(tmp_path, tiny_model_dir, capsys):
    """`--decoders 2` (the engine), with one writer thread or three, and `--polygon-processes
    2` store what `--decoders 0` (the reader thread) stores, and all are speed knobs: a finished run counts as
    up to date whatever the decoders. In this process: the decoder processes are real either
    way, and four interpreters importing torch cost more than the runs."""
    import numpy as np
    import zarr

    # One tile per forward pass: the same float math for every tile on any CPU, however the
    # engine batches across chunks.
    same = ["--model", str(tiny_model_dir), "--quiet", "--precision", "fp32", "--device", "cpu"]
    same += ["--chunk-tiles", "2", "--batch-size", "1", "--overlap", "16"]
    same += ["--runtime", "torch"]  # decoders, not the runtime choice (its own tests)
    same += ["--mpp", "0.25"]  # the slide taken 2x finer: 29 tiles in 11 chunks
    runs = {"0": ["--decoders", "0"], "2": ["--decoders", "2", "--writers", "1"]}
    runs["2w3"] = ["--decoders", "2", "--writers", "3"]
    runs["0p2"] = ["--decoders", "0", "--polygon-processes", "2"]  # polygons traced elsewhere
    stored = {}
    for name, options in runs.items():
        out = tmp_path / name
        done = run_main(capsys, str(CMU_SLIDE), "--out", str(out), *options, *same)
        assert done.returncode == 0, done.stderr
        folder = out / "CMU-1-Small-Region"
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["parameters"]["decoders"] == int(options[1])
        if "--writers" in options:
            assert summary["parameters"]["writers"] == int(options[3])
        array = zarr.open_array(str(folder / "probabilities.ome.zarr" / "0" / "0"), mode="r")
        if "--polygon-processes" in options:
            assert summary["parameters"]["polygon_processes"] == int(options[3])
        polygons = (folder / "tissue.geojson").read_bytes()
        stored[name] = (np.asarray(array[:]), summary["classes"], summary["fingerprint"], polygons)
    a, classes_a, print_a, polygons_a = stored["0"]
    for b, classes_b, print_b, polygons_b in (stored["2"], stored["2w3"], stored["0p2"]):
        np.testing.assert_array_equal(a, b)
        assert classes_a == classes_b and print_a == print_b
        assert polygons_a == polygons_b
    again = run_main(capsys, str(CMU_SLIDE), "--out", str(tmp_path / "0"), "--decoders", "2", *same)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_bad_roi_files_are_usage_errors(tmp_path, capsys):
    """Missing, unreadable or region-less `--roi` files: one `error:` line naming the file,
    exit 2, no traceback, nothing written; checked before the slide or the model loads (the
    model folder here does not even exist). In this process (the console script's
    dispatcher; an exception escaping it fails the test) but the first: six interpreters
    cost more than the checks."""
    from tests.wsi import qupath_exports as qp

    cells = qp.export(
        tmp_path / "cells.geojson", [qp.cell(1, 1, "c"), qp.line([(0, 0), (9, 9)], "l")]
    )
    (tmp_path / "bad.geojson").write_text("{not json")
    out = tmp_path / "out"
    for roi, words in [
        (tmp_path / "missing.geojson", "ROI file not found"),
        (tmp_path / "bad.geojson", "not valid JSON"),
        (cells, "no area annotation to use as a region (it holds 1 cell, 1 line annotation)"),
    ]:
        for command in ([str(CMU_SLIDE)], ["batch", str(DATA_DIR)]):
            args = [*command, "--roi", str(roi), "--model", str(tmp_path / "none")]
            args += ["--out", str(out)]
            first = roi == tmp_path / "missing.geojson" and command[0] != "batch"
            run = run_cli(*args) if first else run_main(capsys, *args)
            assert run.returncode == 2, run.stderr
            lines = [line for line in run.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith(f"error: {roi}: "), run.stderr
            assert words in lines[0] and "Traceback" not in run.stderr
    assert not out.exists()


def test_region_off_the_slide_exits_2_and_skipped_objects_warn_once(tmp_path, tiny_model_dir):
    from tests.wsi import qupath_exports as qp

    off = qp.export(tmp_path / "off.zip", [qp.annotation(qp.rect(9000, 0, 9500, 400), "o")])
    run = run_cli(
        str(CMU_SLIDE),
        "--roi",
        str(off),
        "--model",
        str(tiny_model_dir),
        "--out",
        str(tmp_path / "o"),
    )
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "lies wholly off the slide" in lines[0]
    mixed = [qp.annotation(qp.rect(700, 900, 900, 1100), "r", name="r")]
    mixed += [qp.cell(710 + 12 * i, 910, f"c{i}") for i in range(5)] + [
        qp.points([(720, 950)], "p")
    ]
    roi = qp.gzipped(tmp_path / "mixed.geojson.gz", mixed)
    done = run_cli(
        str(CMU_SLIDE),
        "--roi",
        str(roi),
        "--model",
        str(tiny_model_dir),
        "--out",
        str(tmp_path / "m"),
        "--quiet",
        "--runtime",
        "torch",  # the ROI's objects, not the runtime choice (its own tests)
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [
        f"warning: {roi}: skipped 5 cells, 1 point annotation (not area annotations); 1 region used"
    ]
    summary = json.loads((tmp_path / "m" / "CMU-1-Small-Region" / "summary.json").read_text())
    assert [r["name"] for r in summary["rois"]] == ["r"]


def test_two_slides_with_one_output_folder_are_refused_up_front(tmp_path, tiny_model_dir):
    """`a/x.svs b/X.svs` would both write `<out>/x` (case-free: one folder on macOS): with
    --overwrite the second replaced the first and both said "done". Refused before anything
    loads, one line naming both files."""
    for folder, name in (("a", "x.svs"), ("b", "X.svs")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).symlink_to(CMU_SLIDE)
    first, second = str(tmp_path / "a" / "x.svs"), str(tmp_path / "b" / "X.svs")
    out = tmp_path / "out"
    result = run_cli(first, second, "--overwrite", "--model", str(tiny_model_dir),
                     "--out", str(out), "--quiet")  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {first} and {second} would both write to the output folder 'X'; segment "
        "them in separate calls with different --out folders, or run them with `wsi-segment "
        "batch` and a manifest whose 'name' column names each one"
    ]
    assert result.stdout == "" and not out.exists()


def test_summary_command_pastes_into_a_shell_and_repeats_the_run(tmp_path, tiny_model_dir):
    """summary.json `command` is one shell line, quoted: a path with a space and a quote,
    pasted as it is into bash, repeats the run (here: reports it up to date)."""
    slide = tmp_path / "it's a slide.svs"
    slide.symlink_to(CMU_SLIDE)
    out = tmp_path / "my out"
    wsi_segment = str(Path(sys.executable).parent / "wsi-segment")  # the console script
    argv = [wsi_segment, str(slide), "--model", str(tiny_model_dir), "--out", str(out),
            "--quiet", "--tissue", "all", "--runtime", "torch", "--mpp", "0.125"]  # fmt: skip
    # torch: quoting, not the runtime choice (its own tests); no cold OpenVINO export.
    # --mpp 0.125: the slide taken 4x finer than it is, a sixteenth of the model tiles
    first = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    command = json.loads((out / "it's a slide" / "summary.json").read_text())["command"]
    assert command == shlex.join(argv)
    again = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.startswith(f"{slide}: up to date")
