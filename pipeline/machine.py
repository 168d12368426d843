"""What a run knows of the machine it runs on, as data (`pipeline.run_policy` decides from it).

`Machine` is a plain frozen description: usable cores, memory, CPU feature flags, and the
CUDA GPUs with what each can do. `probe_machine` fills it in from the real machine, once per
run (or per Dask band, on its worker); everything else takes it as an argument, so the
decisions made from it are tested on any machine with descriptions of others.

The probe never imports torch on a machine without an NVIDIA driver (`/dev/nvidiactl`), so a
CPU run's start pays nothing for it; where a driver is present it asks torch, which counts the
GPUs this process may use (CUDA_VISIBLE_DEVICES) and whether its CUDA build works. A driver
that gives this process no GPU (too old for torch's CUDA, a container without the devices,
an address-space limit) is kept with torch's reason (`Machine.gpu_trouble`): a run that
would use the GPU runs on the CPU, and says why, rather than silently tens of times slower.
"""

from __future__ import annotations

import importlib.util
import math
import os
import resource
from dataclasses import dataclass
from typing import Any

from wsi_segment.models import cpu
from wsi_segment.models.cpu import AMX_FLAG, AVX512_BF16_FLAG
from wsi_segment.pipeline.cpu_quota import cpu_quota_cores

GIB = 1 << 30
NVIDIA_DRIVER = "/dev/nvidiactl"


@dataclass(frozen=True)
class Gpu:
    """One CUDA device this process may use."""

    name: str
    memory_bytes: int
    bf16: bool = True  # bf16 autocast supported (compute capability 8.0 and later)
    nvjpeg: bool = True  # torchvision decodes JPEG streams on it (its CUDA build ships nvJPEG)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "memory_gib": round(self.memory_bytes / GIB, 1),
            "bf16": self.bf16,
            "nvjpeg": self.nvjpeg,
        }


@dataclass(frozen=True)
class Machine:
    """The machine a run (or a Dask band) runs on, as the run policy sees it."""

    cores: int  # cores this process may run on (its CPU affinity and CPU quota)
    memory_bytes: int
    cpu_flags: frozenset[str] = frozenset()
    gpus: tuple[Gpu, ...] = ()
    openvino: bool = False  # the OpenVINO runtime is installed (models.runtimes)
    # why an installed NVIDIA driver gives this process no GPU (torch's words), else None
    gpu_trouble: str | None = None

    @property
    def amx(self) -> bool:
        return AMX_FLAG in self.cpu_flags

    @property
    def avx512_bf16(self) -> bool:
        return AVX512_BF16_FLAG in self.cpu_flags

    @property
    def jpeg_decoders(self) -> tuple[str, ...]:
        """JPEG decoders the device read path may use: libjpeg-turbo on the CPU always
        (torchvision), nvJPEG where a GPU has it."""
        return ("libjpeg", "nvjpeg") if any(g.nvjpeg for g in self.gpus) else ("libjpeg",)

    def as_dict(self) -> dict[str, Any]:
        """For summary.json: the facts the policy used (CPU flags only those it reads)."""
        return {
            "cores": self.cores,
            "memory_gib": round(self.memory_bytes / GIB, 1),
            "cpu_bf16": "amx" if self.amx else ("avx512_bf16" if self.avx512_bf16 else "none"),
            "gpus": [g.as_dict() for g in self.gpus],
            "jpeg_decoders": list(self.jpeg_decoders),
            "openvino": self.openvino,
            "gpu_trouble": self.gpu_trouble,
        }


def probe_machine() -> Machine:
    """This machine as this process sees it (affinity, memory, /proc/cpuinfo, CUDA)."""
    gpus, trouble = probe_gpus()
    return Machine(
        cores=usable_cores(),
        memory_bytes=_memory_bytes(),
        cpu_flags=cpu.cpu_flags(),
        gpus=gpus,
        openvino=importlib.util.find_spec("openvino") is not None,
        gpu_trouble=trouble,
    )


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's cpuset, a SLURM
    job), capped by its cgroup's CPU quota rounded up (`cpu_quota.cpu_quota_cores`)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cpu_quota_cores()
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def _memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # not POSIX
        return 0


def probe_gpus(driver: str = NVIDIA_DRIVER) -> tuple[tuple[Gpu, ...], str | None]:
    """The CUDA devices torch gives this process, and why none where the NVIDIA `driver` is
    installed yet CUDA does not start. Without the driver, or with CUDA_VISIBLE_DEVICES
    hiding every GPU ("" or "-1"), none and no reason, and torch is not imported."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if (visible is not None and visible.strip() in ("", "-1")) or not os.path.exists(driver):
        return (), None
    import torch

    if not torch.cuda.is_available():
        return (), _cuda_failure(driver)
    nvjpeg = _torchvision_cuda()
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(Gpu(str(props.name), int(props.total_memory), props.major >= 8, nvjpeg))
    return tuple(gpus), None


def _cuda_failure(driver: str) -> str:
    """Why torch's CUDA does not start beside an installed driver: its own error, and an
    address-space limit, which CUDA cannot live under (it maps far more than it uses)."""
    from wsi_segment.models.device import cuda_start_error

    why = cuda_start_error()
    limit, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if limit != resource.RLIM_INFINITY:
        why += f"; this process has an address-space limit (ulimit -v {limit // 1024} KiB)"
    return f"an NVIDIA driver is installed ({driver}) but CUDA does not start: {why}"


def _torchvision_cuda() -> bool:
    """Whether torchvision is a CUDA build (those ship nvJPEG for `decode_jpeg` on CUDA)."""
    try:
        import torchvision
    except ImportError:
        return False
    return "+cpu" not in str(torchvision.__version__)
