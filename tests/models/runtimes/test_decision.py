"""runtime_decision: one pure function of the request and the machine."""

from __future__ import annotations

import pytest

from wsi_segment.errors import ConfigError
from wsi_segment.models.runtimes.decision import (
    openvino_bf16_candidate,
    precision_decision,
    runtime_decision,
)

ZEN4 = frozenset({"avx2", "avx512f", "avx512_bf16", "sse4a"})
INTEL_BF16 = frozenset({"avx2", "avx512f", "avx512_bf16"})  # no AMX
SPR = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
AVX2 = frozenset({"avx2", "fma"})


@pytest.mark.parametrize(
    ("requested", "device", "flags", "available", "runtime", "reason"),
    [
        ("auto", "cpu", ZEN4, True, "openvino", "openvino: auto on a CPU with bf16 in hardware"),
        (
            "auto",
            "cpu",
            INTEL_BF16 - {"avx512_bf16"},
            True,
            "openvino",
            "openvino: auto on a CPU without bf16 hardware",
        ),
        ("auto", "cpu", AVX2, True, "openvino", "openvino: auto on a CPU without bf16 hardware"),
        ("auto", "cpu", frozenset({"sse4_2"}), True, "torch", "torch: auto on a CPU without AVX2"),
        ("auto", "cuda", SPR, True, "torch", "torch: auto on cuda (OpenVINO is the CPU runtime)"),
        ("auto", "cpu", SPR, False, "torch", "torch: auto on a CPU OpenVINO, but it cannot"),
        ("torch", "cpu", SPR, True, "torch", "torch: asked for (--runtime torch)"),
        ("openvino", "cpu", AVX2, True, "openvino", "openvino: asked for (--runtime openvino)"),
        ("openvino", "cpu", AVX2, False, "torch", "torch: asked for OpenVINO, but it cannot"),
    ],
)
def test_decision(
    requested: str, device: str, flags: frozenset[str], available: bool, runtime: str, reason: str
) -> None:
    got, why = runtime_decision(requested, device, flags, available)
    assert got == runtime and why.startswith(reason)


def test_openvino_on_a_gpu_run_and_unknown_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="--runtime openvino runs on the CPU"):
        runtime_decision("openvino", "cuda", SPR, True)
    with pytest.raises(ConfigError, match="unknown runtime 'tensorrt'"):
        runtime_decision("tensorrt", "cpu", SPR, True)


def test_bf16_is_a_candidate_where_openvino_bf16_was_measured_faster() -> None:
    """AMX, or AVX512-BF16 on AMD (Zen 4); not Intel's AVX512-BF16 without AMX (slower)."""
    assert openvino_bf16_candidate(ZEN4) and openvino_bf16_candidate(SPR)
    assert not openvino_bf16_candidate(INTEL_BF16)
    assert not openvino_bf16_candidate(AVX2)
    assert not openvino_bf16_candidate(AVX2 | {"sse4a"})  # AMD without bf16


@pytest.mark.parametrize(
    ("requested", "device", "runtime", "flags", "gpu_bf16", "value", "reason"),
    [
        ("auto", "cpu", "torch", SPR, False, "bf16-if-calibrated", "auto on a CPU with AMX: bf16"),
        ("auto", "cpu", "torch", ZEN4, False, "fp32", "auto on a CPU with AVX512-BF16 without"),
        ("auto", "cpu", "torch", AVX2, False, "fp32", "auto on a CPU with no bf16 hardware"),
        ("auto", "cpu", "openvino", ZEN4, False, "bf16-if-calibrated", "auto on a CPU where "),
        ("auto", "cpu", "openvino", INTEL_BF16, False, "fp32", "auto on a CPU where OpenVINO's"),
        ("auto", "cuda", "torch", AVX2, True, "bf16", "auto on a GPU with bf16"),
        ("auto", "cuda", "torch", AVX2, False, "fp16", "auto on a GPU without bf16"),
        ("bf16", "cpu", "torch", AVX2, False, "bf16", "asked for (--precision bf16)"),
        ("fp32", "cuda", "torch", SPR, True, "fp32", "asked for (--precision fp32)"),
    ],
)
def test_precision_decision(
    requested: str,
    device: str,
    runtime: str,
    flags: frozenset[str],
    gpu_bf16: bool,
    value: str,
    reason: str,
) -> None:
    """What the forward passes run in: one pure function the run policy calls."""
    got, why = precision_decision(requested, device, runtime, flags, gpu_bf16)
    assert got == value and why.startswith(f"{value}: {reason}")
