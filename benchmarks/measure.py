"""Measuring one benchmark run: child processes, the machine, and the RESULTS.md record.

Kept apart from the sections so every figure is taken the same way: wall clock and CPU time
of a `wsi-segment` process from the kernel (os.wait4), its peak RSS from its own VmHWM,
device utilisation beside it, and the load average, which says how far a shared machine's
figures can be trusted.

Peak RSS is not the rusage `ru_maxrss`: Linux carries the high-water mark of the address
space a process had before `exec` into it, and a child starts as a copy of this process (or
shares its memory, under vfork), so `ru_maxrss` is at least this process's own peak: after
writing a 100k px slide, far more than the run's. `/proc/<pid>/status` VmHWM belongs to the
child's own address space after `exec`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
RUNS_END = "<!-- throughput.py appends runs above this line -->"


def log(*args: Any) -> None:
    """Progress goes to stderr, so stdout stays the table (and the last line ratio=X.XX)."""
    print(*args, file=sys.stderr, flush=True)


def loadavg() -> str:
    """1/5/15-min load: how busy a shared machine was while a figure was taken."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def machine_info() -> dict[str, Any]:
    """CPU, flags (AMX / bf16), GPU and torch: what a recorded figure depends on."""
    import torch

    from wsi_segment.models.cpu import BF16_FLAGS, cpu_flags

    model_name = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = sorted(
        f for f in cpu_flags() if f.startswith(("amx", "avx512_bf16", "avx512f", "avx2"))
    )
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return {
        "cpu": model_name,
        "cores": os.cpu_count(),
        "mem_gb": round(mem_gb, 1),
        "flags": " ".join(flags),
        "bf16": bool(cpu_flags() & BF16_FLAGS),
        "gpu": gpu,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


@dataclass
class ChildRun:
    """What one child process cost, from the kernel (os.wait4 rusage: wall, CPU; /proc
    VmHWM: peak RSS), not from itself."""

    wall_s: float
    cpu_s: float
    maxrss_mb: float
    returncode: int
    stderr: str = ""
    gpu: str = ""  # device utilisation during the run (GpuSampler.report)


class ChildPeakRss:
    """Peak RSS of one child process, MB: its VmHWM, read from /proc/<pid>/status every
    `period_s` until it exits (a zombie has none). VmHWM only grows, so the figure is exact
    but for growth in the last `period_s` before the exit."""

    def __init__(self, pid: int, period_s: float = 0.05) -> None:
        self.pid = pid
        self.period_s = period_s
        self.mb = 0.0
        self._done = threading.Event()

    def __enter__(self) -> ChildPeakRss:
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._done.is_set():
            hwm = vm_hwm_mb(self.pid)
            if hwm is None:
                return
            self.mb = max(self.mb, hwm)
            self._done.wait(self.period_s)

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def vm_hwm_mb(pid: int) -> float | None:
    """VmHWM of `pid` in MB; None once it has exited (or never existed)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return None


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> ChildRun:
    """Run a command; wall time and CPU time of that process (os.wait4), and its peak RSS
    (its own VmHWM, `ChildPeakRss`: rusage would count this process's memory)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT, text=True
    )
    with ChildPeakRss(proc.pid) as peak:
        err = proc.stderr.read() if proc.stderr else ""
        _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(wall, ru.ru_utime + ru.ru_stime, peak.mb, proc.returncode, err)


def wsi_segment_cmd(slide: Path, model: Path, out: Path, extra: list[str]) -> list[str]:
    """The installed `wsi-segment` command (module fallback), as a user would run it."""
    exe = Path(sys.executable).with_name("wsi-segment")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "wsi_segment.flows.cli"]
    return [
        *base,
        str(slide),
        "--model",
        str(model),
        "--out",
        str(out),
        "--overwrite",
        "--quiet",
        *extra,
    ]


class GpuSampler:
    """Device utilisation while a run lasts, from `nvidia-smi -lms` (GPU machines only).

    No GPU, or no nvidia-smi: `report()` says so and nothing is started."""

    def __init__(self, period_ms: int = 250) -> None:
        self._cmd = [
            "nvidia-smi",
            "--query-gpu=index,utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
            f"-lms={period_ms}",
        ]
        self._proc: subprocess.Popen | None = None
        self._lines: list[str] = []

    def __enter__(self) -> GpuSampler:
        import torch

        if torch.cuda.is_available() and shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(self._cmd, stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            out, _ = self._proc.communicate(timeout=10)
            self._lines = [ln for ln in out.splitlines() if ln.count(",") == 2]

    def report(self) -> str:
        if self._proc is None:
            return "GPU utilisation: n/a (no CUDA GPU or no nvidia-smi)"
        util: dict[str, list[float]] = {}
        mem: dict[str, float] = {}
        for line in self._lines:
            idx, u, m = (v.strip() for v in line.split(","))
            util.setdefault(idx, []).append(float(u))
            mem[idx] = max(mem.get(idx, 0.0), float(m))
        return "GPU utilisation: " + "; ".join(
            f"gpu{i} mean {sum(v) / len(v):.0f} %, max {max(v):.0f} %, peak mem {mem[i]:.0f} MiB"
            for i, v in sorted(util.items())
        )


def fixed_cost_allowed(model_s: float, inference_s: float, goal: float) -> float | None:
    """The most fixed cost F (wall clock outside the inference stage) at which a run still
    reaches `goal` x the bare model: ratio = model_s / (F + inference_s), so F <= model_s /
    goal - inference_s. `model_s`: the bare model's time for the run's tiles; None where the
    stage alone is no faster than the goal allows (then the stage, not F, bounds the ratio)."""
    allowed = model_s / goal - inference_s
    return allowed if allowed > 0 else None


def run_pipeline(slide: Path, model: Path, out: Path, extra: list[str]) -> tuple[ChildRun, dict]:
    """`wsi-segment` end to end in a fresh output folder; its run figures and summary.json."""
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    with GpuSampler() as gpu:
        run = run_child(wsi_segment_cmd(slide, model, out, extra), env)
    run.gpu = gpu.report()
    if run.returncode != 0:
        raise RuntimeError(f"wsi-segment failed ({run.returncode}):\n{run.stderr[-3000:]}")
    summary = json.loads((output_folder(out, slide) / "summary.json").read_text())
    return run, summary


def output_folder(out: Path, slide: Path) -> Path:
    """Where `wsi-segment` wrote `slide`'s outputs under `out` (`OS-1-detail.ome.tif` ->
    `OS-1-detail`: the CLI's own naming, not `Path.stem`)."""
    from wsi_segment.pipeline.outputs.output_name import slide_output_name

    return out / slide_output_name(str(slide))


def zarr_bytes(folder: Path) -> int:
    """On-disk size of an output store (compression is part of the cost)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- output


def render(rows: list, notes: list, info: dict, command: str, started: str, wall: float) -> str:
    """One Markdown block: the command, the machine and load, notes, then the table."""
    lines = [
        f"### {started} UTC",
        "",
        f"`{command}` ({wall:.0f} s)",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['mem_gb']} GB, flags "
        f"`{info['flags']}`, GPU {info['gpu']}; torch {info['torch']} "
        f"({info['torch_threads']} threads), Python {info['python']}; "
        f"load average at start {info['load_start']}, at end {loadavg()}.",
        "",
    ]
    lines += [f"- {n}" for n in notes]
    lines += ["", "| item | figure | details |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def record(block: str) -> None:
    """Insert a run above RUNS_END in RESULTS.md, so runs stay in order with text after."""
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Benchmark results\n\n## Throughput, memory, scaling, precision "
            "(benchmarks/throughput.py)\n\n" + RUNS_END + "\n"
        )
    text = RESULTS.read_text()
    if RUNS_END not in text:
        text = text.rstrip("\n") + "\n\n" + RUNS_END + "\n"
    text = text.replace(RUNS_END, block + "\n" + RUNS_END, 1)
    RESULTS.write_text(text)


def slide_args(ap: Any, size: int) -> None:
    """The options every slide benchmark takes: a synthetic slide's side and tissue, the
    model (default: demo), the work folder, and whether to keep the block in RESULTS.md."""
    ap.add_argument("--size", type=int, default=size, help="synthetic slide side, px")
    ap.add_argument("--tissue", type=float, default=0.6)
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: demo)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/wsi-segment-bench"))
    ap.add_argument("--no-record", action="store_true")


@dataclass
class BenchRun:
    """One benchmark run from start to its RESULTS.md block: the start time, the machine and
    its load when it began (`start`), then the command, the wall time and the table
    (`finish`), the same for every script."""

    script: str  # e.g. "runtime.py"
    argv: list[str] | None  # main's argv (None: the command line's)
    info: dict[str, Any]
    started: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"))
    t0: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, script: str, argv: list[str] | None) -> BenchRun:
        info = machine_info()
        info["load_start"] = loadavg()
        return cls(script, argv, info)

    def finish(self, rows: list, notes: list, keep: bool) -> str:
        """Print the block (and insert it in RESULTS.md when `keep`); returns it."""
        args = sys.argv[1:] if self.argv is None else self.argv
        command = f"python benchmarks/{self.script} " + " ".join(args)
        block = render(rows, notes, self.info, command.strip(), self.started,
                       time.perf_counter() - self.t0)  # fmt: skip
        print(block)
        if keep:
            record(block)
        return block
