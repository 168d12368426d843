"""CLI options out of range are usage errors (exit 2) that show the valid range or choices.

These run the real `wsi-segment` in a subprocess: argparse rejects them before torch is
imported, so each costs well under a second.
"""

from __future__ import annotations

import pytest

from tests.conftest import CMU_SLIDE
from tests.reliability.conftest import (
    assert_clean_error,
    assert_nothing_written,
    assert_usage_error,
    run_cli,
    run_cli_inprocess,
)

USAGE_CASES = [
    (["--batch-size", "0"], ["--batch-size", "out of range [1, 4096]"]),
    (["--batch-size", "-3"], ["--batch-size", "[1, 4096]"]),
    (["--batch-size", "100000"], ["--batch-size", "[1, 4096]"]),
    (["--batch-size", "two"], ["--batch-size", "not an integer"]),
    (["--chunk-tiles", "0"], ["--chunk-tiles", "[1, 64]"]),
    (["--chunk-tiles", "65"], ["--chunk-tiles", "[1, 64]"]),
    (["--overlap", "-2"], ["--overlap", "[0, 1024]"]),
    (["--overlap", "3"], ["--overlap", "must be even"]),
    (["--overlap", "2000"], ["--overlap", "[0, 1024]"]),
    (["--device", "tpu"], ["--device", "invalid choice", "auto", "cpu", "cuda"]),
    (["--backend", "pillow"], ["--backend", "invalid choice", "openslide"]),
    (["--mpp", "0"], ["--mpp", "[0.01, 100]"]),
    (["--mpp", "-0.5"], ["--mpp", "[0.01, 100]"]),
    (["--mpp", "1e9"], ["--mpp", "[0.01, 100]"]),
    (["--mpp", "nan"], ["--mpp", "[0.01, 100]"]),
    (["--mpp", "inf"], ["--mpp", "[0.01, 100]"]),
    (["--mpp", "abc"], ["--mpp", "not a number"]),
    (["--output-downsample", "0"], ["--output-downsample", "[1, 64]"]),
    (["--threads", "0"], ["--threads", "[1, 256]"]),
]


# A few in a real subprocess (the exit code the shell sees); the rest in-process, through
# the same parser and dispatcher, to keep the fast test set fast on a busy machine.
SUBPROCESS_CASES = {"--batch-size 0", "--overlap 3", "--device tpu", "--mpp 0"}


@pytest.mark.parametrize(
    ("options", "words"), USAGE_CASES, ids=[" ".join(c[0]) for c in USAGE_CASES]
)
def test_out_of_range_option_is_a_usage_error(options, words, tmp_path, capsys):
    out = tmp_path / "out"
    args = [CMU_SLIDE, "--out", out, *options]
    if " ".join(options) in SUBPROCESS_CASES:
        result = run_cli(args, timeout=120)
    else:
        result = run_cli_inprocess(args, capsys)
    assert_usage_error(result, *words)
    assert not out.exists()


def test_no_slide_is_a_usage_error(tmp_path):
    assert_usage_error(run_cli(["segment"], timeout=120), "SLIDE")


def test_cuda_requested_without_a_gpu(tiny_model_dir, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "out"
    args = [CMU_SLIDE, "--model", tiny_model_dir, "--out", out, "--device", "cuda"]
    result = run_cli_inprocess(args, capsys)
    assert_clean_error(result, "cuda", "--device cpu")
    assert_nothing_written(out)


def test_output_downsample_that_does_not_divide_the_stride(tiny_model_dir, tmp_path, capsys):
    """In range for argparse but inconsistent with the model's tile: a clear config error."""
    out = tmp_path / "out"
    args = [CMU_SLIDE, "--model", tiny_model_dir, "--out", out, "--output-downsample", "7"]
    result = run_cli_inprocess(args, capsys)
    assert_clean_error(result, "downsample")
    assert_nothing_written(out)


def test_chunk_tiles_that_would_cut_a_zarr_chunk(tiny_model_dir, tmp_path, capsys):
    """In range for argparse, but 3 x 3 chunks would share zarr chunks (8 x 8 tile cores)
    in ways no writer owns: a config error naming the values that work."""
    out = tmp_path / "out"
    args = [CMU_SLIDE, "--model", tiny_model_dir, "--out", out, "--chunk-tiles", "3"]
    result = run_cli_inprocess(args, capsys)
    assert_clean_error(result, "chunk tiles must divide 8", "--chunk-tiles 1, 2, 4, 8, 16")
    assert_nothing_written(out)


def test_overlap_as_large_as_the_tile(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = [CMU_SLIDE, "--model", tiny_model_dir, "--out", out, "--overlap", "64"]
    result = run_cli_inprocess(args, capsys)
    assert_clean_error(result, "overlap")
    assert_nothing_written(out)
