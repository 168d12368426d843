"""Which runtime and precision run the inference graph: pure functions of the request and
the machine, so the run policy calls them for a machine it only describes. `auto` takes
OpenVINO on a CPU with AVX2 where it is installed (faster than torch there); older CPUs and
GPUs keep torch.
"""

from __future__ import annotations

from wsi_segment.errors import ConfigError

from ..cpu import AMX_FLAG, AVX512_BF16_FLAG, BF16_FLAGS

RUNTIME_CHOICES = ("auto", "torch", "openvino")


def runtime_decision(
    requested: str, device_type: str, cpu_flags: frozenset[str], openvino_available: bool
) -> tuple[str, str]:
    """(runtime, reason): 'torch' or 'openvino' for `requested` on a `device_type` ('cpu' |
    'cuda') machine. An explicit `openvino` on a GPU run is a ConfigError (it would run on the
    CPU beside an idle GPU); without OpenVINO it falls back to torch, with the reason."""
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
    if "avx2" not in cpu_flags:
        return "torch", (
            "torch: auto on a CPU without AVX2, where OpenVINO was not measured faster; "
            "--runtime openvino still runs it"
        )
    bf16 = "with bf16 in hardware" if cpu_flags & BF16_FLAGS else "without bf16 hardware"
    return "openvino", f"openvino: auto on a CPU {bf16} (faster than torch there)"


def openvino_bf16_candidate(cpu_flags: frozenset[str]) -> bool:
    """Whether precision auto tries bf16 in OpenVINO: where its bf16 kernels beat fp32: AMX,
    or AVX512-BF16 on AMD (told by `sse4a`, which only AMD CPUs report); Intel's AVX512-BF16
    without AMX ran slower."""
    amd_bf16 = AVX512_BF16_FLAG in cpu_flags and "sse4a" in cpu_flags
    return AMX_FLAG in cpu_flags or amd_bf16


PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
# precision auto where bf16 is faster: bf16 if the model keeps its labels in bf16 on the
# real calibration tiles (models/precision_calibration.py, run where the model is), else fp32
BF16_IF_CALIBRATED = "bf16-if-calibrated"


def precision_decision(
    requested: str,
    device_type: str,
    runtime: str,
    cpu_flags: frozenset[str],
    gpu_bf16: bool,
    gpu_name: str = "",
) -> tuple[str, str]:
    """(precision, reason): what the forward passes run in for `requested` in `runtime`.
    Auto: bf16 on a GPU (fp16 without it); on a CPU bf16 is a candidate (`BF16_IF_CALIBRATED`)
    only where the runtime's bf16 was measured faster."""
    if requested not in PRECISION_CHOICES:
        raise ConfigError(f"unknown precision {requested!r}; use auto, fp32, bf16 or fp16")
    if requested == "fp16" and device_type == "cpu":
        raise ConfigError("fp16 autocast is for GPUs; on CPU use bf16 or fp32")
    if requested != "auto":
        return requested, f"{requested}: asked for (--precision {requested})"
    if device_type != "cpu":
        name = f" ({gpu_name})" if gpu_name else ""
        if gpu_bf16:
            return "bf16", f"bf16: auto on a GPU with bf16{name}"
        return "fp16", f"fp16: auto on a GPU without bf16{name}"
    calibrate = "bf16 where the model keeps its labels on fixed calibration tiles, else fp32"
    if runtime == "openvino":
        if openvino_bf16_candidate(cpu_flags):
            why = "auto on a CPU where OpenVINO's bf16 is faster (AMX, or AVX512-BF16 on AMD)"
            return BF16_IF_CALIBRATED, f"{BF16_IF_CALIBRATED}: {why}: {calibrate}"
        return "fp32", (
            "fp32: auto on a CPU where OpenVINO's bf16 is not faster (no AMX, and no "
            "AVX512-BF16 on an AMD CPU)"
        )
    if AMX_FLAG in cpu_flags:
        return BF16_IF_CALIBRATED, f"{BF16_IF_CALIBRATED}: auto on a CPU with AMX: {calibrate}"
    has = "AVX512-BF16 without AMX" if AVX512_BF16_FLAG in cpu_flags else "no bf16 hardware"
    return "fp32", f"fp32: auto on a CPU with {has} (bf16 is not reliably faster there)"
