"""A cluster's pinned precision: what each worker loads the model in."""

from __future__ import annotations

from wsi_segment.pipeline.inference.model_handle import precision_to_load


def test_a_pinned_cpu_precision_applies_to_cpu_workers_only() -> None:
    assert precision_to_load("fp32", "cpu") == precision_to_load("fp32", "cuda") == "fp32"
    assert precision_to_load("bf16", "cpu") == "bf16"  # a cluster's trial said bf16
    assert precision_to_load("bf16", "cuda") == "auto"  # a GPU worker decides for itself
    assert precision_to_load("auto", "cpu") == precision_to_load("auto", "cuda") == "auto"
