"""Which runtime runs the inference graph: one pure function of the request and the machine.

OpenVINO runs the whole graph of a tile (preprocess, classifier, gate, segmenter, reduction)
faster than torch on AVX-512 CPUs (benchmarks/RESULTS.md: fp32 1.2-1.4x, bf16 about 2x on
AVX512-BF16 of AMD), so `auto` takes it on such a CPU where it is installed; on a CPU capped to
AVX2 it ran 0.71x torch, so `auto` keeps torch there until a real AVX2-only CPU says otherwise;
on a GPU torch stays (no GPU runtime is shipped before it is measured). Everything here is data in, data out, so the run
policy can call it for a machine it only describes.
"""

from __future__ import annotations

from wsi_segment.errors import ConfigError

from ..cpu import AMX_FLAG, AVX512_BF16_FLAG, BF16_FLAGS

RUNTIME_CHOICES = ("auto", "torch", "openvino")


def runtime_decision(
    requested: str, device_type: str, cpu_flags: frozenset[str], openvino_available: bool
) -> tuple[str, str]:
    """(runtime, reason): 'torch' or 'openvino' for `requested` (auto | torch | openvino) on a
    `device_type` ('cpu' | 'cuda') machine with `cpu_flags`, OpenVINO importable or not.

    An explicit `openvino` on a GPU run is a ConfigError (it would run on the CPU beside an
    idle GPU); an explicit `openvino` without OpenVINO falls back to torch, with the reason.
    """
    if requested not in RUNTIME_CHOICES:
        raise ConfigError(
            f"unknown runtime {requested!r}; choose one of {', '.join(RUNTIME_CHOICES)}"
        )
    if requested == "torch":
        return "torch", "torch: asked for (--runtime torch)"
    if device_type != "cpu":
        if requested == "openvino":
            raise ConfigError(
                f"--runtime openvino runs on the CPU, but the model runs on {device_type}; "
                "use --device cpu, or --runtime auto or torch"
            )
        return "torch", f"torch: auto on {device_type} (OpenVINO is the CPU runtime)"
    if not openvino_available:
        why = "asked for" if requested == "openvino" else "auto on a CPU"
        return "torch", f"torch: {why} OpenVINO, but it cannot be imported here"
    if requested == "openvino":
        return "openvino", "openvino: asked for (--runtime openvino)"
    if "avx512f" not in cpu_flags:
        return "torch", (
            "torch: auto on a CPU without AVX-512, where OpenVINO's fp32 ran 0.71x torch "
            "(AVX2 proxy, benchmarks/RESULTS.md); --runtime openvino still runs it"
        )
    bf16 = "with bf16 in hardware" if cpu_flags & BF16_FLAGS else "without bf16 hardware"
    return "openvino", f"openvino: auto on a CPU {bf16} (faster than torch there)"


def openvino_bf16_candidate(cpu_flags: frozenset[str]) -> bool:
    """Whether precision auto tries bf16 in OpenVINO: where its bf16 kernels were measured
    faster than its fp32 ones (benchmarks/RESULTS.md): AMX, or AVX512-BF16 on an AMD CPU
    (Zen 4: about 2x). On an Intel CPU with AVX512-BF16 and no AMX they ran 0.4-0.6x fp32,
    so it stays fp32. AMD is told by `sse4a`, an instruction set only AMD CPUs report."""
    if AMX_FLAG in cpu_flags:
        return True
    return AVX512_BF16_FLAG in cpu_flags and "sse4a" in cpu_flags
