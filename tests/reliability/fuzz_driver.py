"""Run many `wsi-segment` invocations cheaply, each in its own process with a time limit.

Used by test_fuzz.py: importing torch costs 5-30 s on the shared test machine, so this
driver imports the CLI once and forks one child per case. Each child runs the real
`flows.cli.main(argv)` with stdout/stderr sent to files and exits with its return code;
an exception escaping `main` is printed as a traceback (what a user would see) and exits
99. The parent kills a child that exceeds the time limit (a hang). The parent never runs
torch, zarr or a slide reader itself, so forking it is safe.

    python tests/reliability/fuzz_driver.py cases.json results.json
cases.json: [{"argv": [...], "log": "path prefix"}], results.json: [{"code", "seconds", "timeout"}]
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback


def run_case(argv: list[str], log: str, limit: float) -> dict:
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child
        code = 98
        try:
            out = os.open(log + ".out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            err = os.open(log + ".err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out, 1)
            os.dup2(err, 2)
            from wsi_segment.flows.cli import main

            try:
                code = int(main(argv) or 0)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 99
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    timed_out = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - t0 > limit:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.05)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return {"code": code, "seconds": round(time.monotonic() - t0, 2), "timeout": timed_out}


def main() -> int:
    cases_path, results_path = sys.argv[1], sys.argv[2]
    limit = float(sys.argv[3]) if len(sys.argv) > 3 else 120.0
    with open(cases_path) as fh:
        cases = json.load(fh)
    import wsi_segment.flows.cli
    import wsi_segment.pipeline.segment  # noqa: F401

    results = []
    for case in cases:
        results.append(run_case(case["argv"], case["log"], limit))
        with open(results_path, "w") as fh:  # progress survives an outer timeout
            json.dump(results, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
