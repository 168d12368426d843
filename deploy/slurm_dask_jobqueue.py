"""HPC example: a Dask cluster of SLURM GPU jobs (dask-jobqueue) running a wsi-segment batch.

    pip install 'wsi-segment[hpc]'            # adds dask-jobqueue
    python deploy/slurm_dask_jobqueue.py /shared/slides --out /shared/outputs \
        --jobs 4 --gpus 1 --cores 8 --memory 32GiB --walltime 04:00:00 --partition gpu

This process (run it on a login node, or in a small CPU job) holds the Dask scheduler and
the Prefect flow; each SLURM job is one Dask worker process with one GPU, which loads the
model once and processes chunks of any slide. Slides and outputs must be on a file system
every node sees. Set PREFECT_API_URL to report to a Prefect server; without it the flow
runs with Prefect's in-process server. Print the job script with `--dry-run` first.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

# Dask starts worker processes daemonic, and a daemonic process may not start processes
WORKER_NOT_DAEMONIC = "DASK_DISTRIBUTED__WORKER__DAEMON=False"


def make_cluster(
    cores: int = 8,
    memory: str = "32GiB",
    gpus: int = 1,
    walltime: str = "04:00:00",
    partition: str | None = None,
    account: str | None = None,
    prologue: list[str] | None = None,
) -> Any:
    """A SLURMCluster whose jobs are single GPU workers (no jobs are submitted until scaled)."""
    from dask_jobqueue import SLURMCluster

    directives = [f"--gres=gpu:{gpus}"] if gpus else []
    return SLURMCluster(
        cores=cores,
        processes=1,  # one worker process per job: one model in memory per GPU
        memory=memory,
        walltime=walltime,
        queue=partition,
        account=account,
        job_extra_directives=directives,
        worker_extra_args=["--resources", f"GPU={gpus}"] if gpus else [],
        # the same environment on every node, e.g. ["source /shared/wsi-segment/.venv/bin/activate"];
        # a non-daemonic worker may start the engine's decoder processes
        job_script_prologue=[*(prologue or []), f"export {WORKER_NOT_DAEMONIC}"],
        scheduler_options={"dashboard_address": None},
    )


def job_script(**kwargs: Any) -> str:
    """The sbatch script one worker job would use."""
    cluster = make_cluster(**kwargs)
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="folder, glob or manifest CSV of slides")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--jobs", type=int, default=2, help="SLURM jobs = Dask workers")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per job (0: CPU workers)")
    parser.add_argument("--cores", type=int, default=8)
    parser.add_argument("--memory", default="32GiB")
    parser.add_argument("--walltime", default="04:00:00")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--account", default=None)
    parser.add_argument("--prologue", action="append", default=None, help="shell line run first")
    parser.add_argument("--concurrency", type=int, default=4, help="slides in flight")
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="also run slides that failed before and have not changed since",
    )
    parser.add_argument(
        "--slide-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="fail a slide that runs longer than this and go on (default: no limit)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the job script and stop")
    return parser.parse_args(argv)


def batch_arguments(args: argparse.Namespace, scheduler_address: str) -> dict[str, Any]:
    """What `segment_batch` is called with: the batch's own options, as on the CLI."""
    return {
        "input": args.input,
        "out": args.out,
        "model_dir": args.model,
        "dask_address": scheduler_address,
        "concurrency": args.concurrency,
        "retry_failed": args.retry_failed,
        "slide_timeout": args.slide_timeout,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = {
        "cores": args.cores,
        "memory": args.memory,
        "gpus": args.gpus,
        "walltime": args.walltime,
        "partition": args.partition,
        "account": args.account,
        "prologue": args.prologue,
    }
    if args.dry_run:
        print(job_script(**options))
        return 0

    from distributed import Client

    from wsi_segment.flows.batch_flow import BatchFailedError, segment_batch

    cluster = make_cluster(**options)
    cluster.scale(jobs=args.jobs)
    try:
        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=3600)  # the queue may take a while
            try:
                segment_batch(**batch_arguments(args, cluster.scheduler_address))
            except BatchFailedError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
