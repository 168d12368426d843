"""The per-process model cache and handles: what a loaded model depends on is the recipe's
values; the plan's reasons ride along and never load a model again."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

from tests.conftest import torch_spec
from wsi_segment.pipeline.inference.model_handle import ModelHandle, load_for_process


def test_the_cache_keys_on_the_decided_values_not_on_their_reasons(tiny_model_dir: Path) -> None:
    folder = str(tiny_model_dir)
    spec = torch_spec("fp32")
    first = load_for_process(folder, "cpu", spec)
    reworded = dataclasses.replace(spec, runtime_reason="c", precision_reason="d")
    assert load_for_process(folder, "cpu", reworded) is first  # nothing loaded again
    other = load_for_process(folder, "cpu", torch_spec("bf16"))
    assert other.model is not first.model and other.runtime.precision == "bf16"


def test_handles_differing_only_in_their_reasons_have_one_recipe() -> None:
    handle = ModelHandle("m", "cpu", torch_spec("fp32"))
    reworded = dataclasses.replace(
        handle, spec=dataclasses.replace(handle.spec, precision_reason="worded otherwise")
    )
    assert reworded == handle
    assert dataclasses.replace(handle, spec=torch_spec("bf16")) != handle


def test_a_handle_travels_as_its_recipe(tiny_model_dir: Path) -> None:
    handle = ModelHandle(str(tiny_model_dir), "cpu", torch_spec("fp32"))
    loaded = handle.get()
    copy = pickle.loads(pickle.dumps(handle))
    assert copy._loaded is None and copy == handle
    assert copy.get() is loaded  # this process's cache: the same model and lock
