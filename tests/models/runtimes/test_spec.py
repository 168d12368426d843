"""`RuntimeSpec.load_key`: what a process's loaded models are told apart by. Two specs with
one key must open the same runtime; specs whose runtimes differ must not share a key."""

from __future__ import annotations

import dataclasses

from tests.conftest import TORCH_SPEC
from wsi_segment.models.runtimes.decision import BF16_IF_CALIBRATED
from wsi_segment.models.runtimes.spec import RuntimeSpec

VERDICT = {"agreement": 0.9991, "max_area_shift": 0.004, "tiles": 6}  # a kept bf16 verdict


def calibrating(runtime: str) -> RuntimeSpec:
    """A cold plan's spec on a CPU with bf16: the load calibrates (torch's fallback is its
    precision, as `run_policy.runtime_spec` makes it)."""
    fallback = BF16_IF_CALIBRATED if runtime == "torch" else "fp32"
    return dataclasses.replace(
        TORCH_SPEC, runtime=runtime, precision=BF16_IF_CALIBRATED, fallback=fallback, threads=2
    )


def settled(spec: RuntimeSpec, precision: str) -> RuntimeSpec:
    """The same plan decided again from the verdict the calibrating load kept."""
    fallback = precision if spec.runtime == "torch" else spec.fallback
    return dataclasses.replace(spec, precision=precision, fallback=fallback, calibration=VERDICT)


def test_a_precision_settled_by_the_kept_verdict_is_the_calibrating_load() -> None:
    for runtime in ("torch", "openvino"):
        cold = calibrating(runtime)
        for precision in ("bf16", "fp32"):
            warm = settled(cold, precision)
            assert warm != cold and warm.load_key() == cold.load_key(), (runtime, precision)


def test_a_precision_asked_for_is_not_the_calibrating_load() -> None:
    """--precision bf16 (no verdict) runs bf16 without calibrating: another runtime."""
    for runtime in ("torch", "openvino"):
        cold = calibrating(runtime)
        asked = dataclasses.replace(cold, precision="bf16", fallback="bf16")
        assert asked.load_key() != cold.load_key()


def test_threads_tell_openvino_loads_apart_not_torch_ones() -> None:
    """OpenVINO compiles for its threads; torch takes none from the spec (its compute
    threads' shares are the executor's), so a worker whose share changed reuses its model."""
    torch_two = dataclasses.replace(TORCH_SPEC, threads=2)
    assert torch_two.load_key() == dataclasses.replace(TORCH_SPEC, threads=3).load_key()
    ov_two = dataclasses.replace(torch_two, runtime="openvino")
    assert ov_two.load_key() != dataclasses.replace(ov_two, threads=3).load_key()


def test_what_else_opens_another_runtime_still_tells_loads_apart() -> None:
    for field, value in (("cuda_graphs", True), ("cpu_flags", frozenset({"amx_bf16"}))):
        other = dataclasses.replace(TORCH_SPEC, **{field: value})
        assert other.load_key() != TORCH_SPEC.load_key(), field
    ov = dataclasses.replace(TORCH_SPEC, runtime="openvino")
    assert dataclasses.replace(ov, by_name=True).load_key() != ov.load_key()
    assert dataclasses.replace(ov, fallback="bf16").load_key() != ov.load_key()
