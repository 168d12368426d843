"""The per-process model cache and handles: what a loaded model depends on is the recipe's
values; the run policy's reasons ride along and never load a model again."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from wsi_segment.pipeline.inference.model_handle import ModelHandle, load_for_process


def test_the_cache_keys_on_the_decided_values_not_on_their_reasons(tiny_model_dir: Path) -> None:
    folder = str(tiny_model_dir)
    first = load_for_process(folder, "cpu", "fp32", "torch", ("torch", "a"), ("fp32", "b"))
    reworded = load_for_process(folder, "cpu", "fp32", "torch", ("torch", "c"), ("fp32", "d"))
    assert reworded is first  # the same model and lock: nothing loaded again
    other = load_for_process(folder, "cpu", "fp32", "torch", ("torch", "a"), ("bf16", "b"))
    assert other[0] is not first[0] and other[0].autocast_dtype is not None


def test_handles_differing_only_in_their_reasons_have_one_recipe() -> None:
    handle = ModelHandle("m", "cpu", "auto", "", "auto", ("torch", "a"), ("fp32", "b"))
    reworded = dataclasses.replace(
        handle, decided_runtime=("torch", "c"), decided_precision=("fp32", "d")
    )
    assert reworded.recipe() == handle.recipe()
    bf16 = dataclasses.replace(handle, decided_precision=("bf16", "b"))
    assert bf16.recipe() != handle.recipe()
