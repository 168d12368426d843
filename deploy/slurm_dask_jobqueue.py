"""HPC example: a Dask cluster of SLURM GPU jobs (dask-jobqueue) running a wsi-segment batch.

    pip install 'wsi-segment[hpc]'            # adds dask-jobqueue
    python deploy/slurm_dask_jobqueue.py /shared/slides --out /shared/outputs \
        --jobs 4 --gpus 1 --cores 8 --memory 32GiB --walltime 04:00:00 --partition gpu

This process (run it on a login node, or in a small CPU job) holds the Dask scheduler and
runs the batch loop (`flows.batch_loop`, as `wsi-segment batch` does, no Prefect server);
each SLURM job is one Dask worker process with one GPU, which loads the model once and
processes chunks of any slide. No job is submitted when every slide is finished (or a known
failure). Slides and outputs must be on a file system every node sees. Print the job script
with `--dry-run` first. The batch prints the same table, `error:` lines and exit code as
`wsi-segment batch`, and leaves OUT/cohort.csv and OUT/report.html (rebuilt after each slide
and at the end; `wsi-segment report OUT` rebuilds them later); their paths are printed at the
end. For a run recorded in Prefect, deploy the `segment-batch` flow with `dask_address` of a
scheduler the lab keeps (docs/deploy.md).

A worker runs any code sent to it, next to patient slides: the scheduler and the workers
listen only on loopback (one node) or on the interface named by `--interface` (e.g. ib0, the
one the compute nodes share), never on every interface, and every connection is TLS. The
certificates are the lab's (`--tls-ca/--tls-cert/--tls-key`, files every node reads) or, by
default, made for this run and written for the jobs to a folder every node sees
(`--shared-temp-directory`, default: the current folder).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsi_segment.flows.batch_loop import BatchRequest

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
    interface: str | None = None,
    tls: tuple[str, str, str] | None = None,
    shared_temp_directory: str | None = None,
) -> Any:
    """A SLURMCluster whose jobs are single GPU workers (no jobs are submitted until scaled),
    listening on loopback or `interface` only, with TLS: the lab's (ca, cert, key) files
    `tls`, or certificates made now."""
    from dask_jobqueue import SLURMCluster

    directives = [f"--gres=gpu:{gpus}"] if gpus else []
    resources = ["--resources", f"GPU={gpus}"] if gpus else []
    return SLURMCluster(
        cores=cores,
        processes=1,  # one worker process per job: one model in memory per GPU
        memory=memory,
        walltime=walltime,
        queue=partition,
        account=account,
        job_extra_directives=directives,
        worker_extra_args=[*resources, *worker_listen_args(interface)],
        # the same environment on every node, e.g. ["source /shared/wsi-segment/.venv/bin/activate"];
        # a non-daemonic worker may start the engine's decoder processes
        job_script_prologue=[
            *(prologue or []),
            f"export {WORKER_NOT_DAEMONIC}",
            *worker_host_lines(interface),
        ],
        interface=interface,
        scheduler_options=scheduler_listen_options(interface),
        protocol="tls://",
        security=lab_security(tls) if tls else True,
        shared_temp_directory=shared_temp_directory or str(Path.cwd()),
    )


LOOPBACK = "127.0.0.1"
# the certificates made for a run without the lab's, in the shared folder, while it runs
CERT_PREFIX = ".wsi-segment-tls-"


def worker_host_lines(interface: str | None) -> list[str]:
    """Job script lines that find the worker's address on `interface` (its HTTP server
    needs an address: given only a port, Dask listens on every interface)."""
    if interface is None:
        return []
    find = f"from distributed.utils import get_ip_interface; print(get_ip_interface({interface!r}))"
    return [f'WSI_SEGMENT_WORKER_HOST=$({sys.executable} -c "{find}")']


def worker_listen_args(interface: str | None) -> list[str]:
    """Where a worker listens: loopback, or `interface` (`--interface`, added by
    dask-jobqueue) and its HTTP server on the same address."""
    if interface is None:
        return ["--host", LOOPBACK, "--dashboard-address", f"{LOOPBACK}:0"]
    return ["--dashboard-address", "${WSI_SEGMENT_WORKER_HOST}:0"]


def scheduler_listen_options(interface: str | None) -> dict[str, Any]:
    """The scheduler on loopback, or on `interface`, its HTTP server beside it (a free
    port, no dashboard pages): never on every interface."""
    if interface is None:
        return {"host": LOOPBACK, "dashboard_address": f"{LOOPBACK}:0", "dashboard": False}
    from distributed.utils import get_ip_interface

    host = get_ip_interface(interface)
    return {"interface": interface, "dashboard_address": f"{host}:0", "dashboard": False}


def lab_security(tls: tuple[str, str, str]) -> Any:
    """The lab's certificates for every role: CA, certificate and key files."""
    from distributed import Security

    ca, cert, key = (str(Path(p).resolve()) for p in tls)
    for path in (ca, cert, key):
        if not Path(path).is_file():
            raise SystemExit(
                f"error: {path}: no such certificate file; check --tls-ca/--tls-cert/--tls-key"
            )
    return Security(
        tls_ca_file=ca,
        tls_client_cert=cert,
        tls_client_key=key,
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        tls_worker_cert=cert,
        tls_worker_key=key,
        require_encryption=True,
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
    parser.add_argument(
        "--interface",
        default=None,
        help="network interface the scheduler and workers listen on, e.g. ib0 (default: "
        "loopback, for a single node)",
    )
    parser.add_argument("--tls-ca", default=None, help="the lab's CA certificate (PEM)")
    parser.add_argument("--tls-cert", default=None, help="the lab's certificate (PEM)")
    parser.add_argument("--tls-key", default=None, help="its private key (PEM)")
    parser.add_argument(
        "--shared-temp-directory",
        default=None,
        help="folder every node sees, for the certificates made for this run when no "
        "--tls-* is given (default: the current folder)",
    )
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


def tls_files(args: argparse.Namespace) -> tuple[str, str, str] | None:
    """The lab's (ca, cert, key), all three or none (then certificates are made per run)."""
    given = (args.tls_ca, args.tls_cert, args.tls_key)
    if not any(given):
        return None
    if not all(given):
        raise SystemExit("error: give all of --tls-ca, --tls-cert and --tls-key, or none")
    return (args.tls_ca, args.tls_cert, args.tls_key)


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
        "interface": args.interface,
        "tls": tls_files(args),
        "shared_temp_directory": args.shared_temp_directory,
    }
    if args.dry_run:
        print(job_script(**options))
        return 0

    from wsi_segment.flows.cli import run_command

    # the CLI's own handling: the open-file limit raised before the jobs are submitted
    # (SLURM passes this process's limits on to them), errors and stops one `error:` line
    args.command, args.run = "batch", functools.partial(run_on_slurm, options=options)
    return run_command(args)


def run_on_slurm(args: argparse.Namespace, options: dict[str, Any]) -> int:
    """The batch loop with its chunks on the SLURM cluster, reported as `wsi-segment batch`
    reports (the table, `error:` lines, report paths, the exit code)."""
    from wsi_segment.flows.cli_batch import run_and_report
    from wsi_segment.flows.terminal_batch import run_terminal_batch

    request = batch_request(args, options)
    return run_and_report(args.out, False, lambda: run_terminal_batch(request, False))


def batch_request(args: argparse.Namespace, options: dict[str, Any]) -> BatchRequest:
    """The batch loop's request for this command line: the batch's own options, as on the
    CLI, its chunks on the SLURM cluster started once a slide is to run."""
    from wsi_segment.flows.batch_loop import BatchRequest
    from wsi_segment.pipeline.params import SegmentParams

    params = SegmentParams.from_dict({"model_dir": Path(args.model)} if args.model else {})
    return BatchRequest(
        args.input,
        args.out,
        params,
        concurrency=args.concurrency,
        retry_failed=args.retry_failed,
        slide_timeout=args.slide_timeout,
        scheduler=lambda: slurm_scheduler(args.jobs, options),
    )


@contextlib.contextmanager
def slurm_scheduler(jobs: int, options: dict[str, Any]) -> Iterator[str]:
    """The SLURM cluster, up with one worker at least, for the block; yields its scheduler's
    address, with the cluster's certificates in Dask's config for the batch's client. Only
    a batch with a slide to run starts it: nothing is submitted for one all finished. Without
    the lab's certificates, ones made for this run (`run_certificates`)."""
    import dask
    from distributed import Client

    from wsi_segment.flows.dask_cluster import security_config

    with contextlib.ExitStack() as stack:
        if options["tls"] is None:
            shared = Path(options["shared_temp_directory"] or Path.cwd())
            options = {**options, "tls": stack.enter_context(run_certificates(shared))}
        cluster = make_cluster(**options)
        stack.callback(cluster.close)
        # adaptive with a fixed size: a job that ends (walltime, scancel, a node lost) is
        # replaced by a new one, and its chunks run again there
        cluster.adapt(minimum_jobs=jobs, maximum_jobs=jobs)
        with Client(cluster) as client, dask.config.set(security_config(cluster.security)):
            client.wait_for_workers(1, timeout=3600)  # the queue may take a while
            yield cluster.scheduler_address


@contextlib.contextmanager
def run_certificates(folder: Path) -> Iterator[tuple[str, str, str]]:
    """A CA certificate and a key made for this run (Dask's `Security.temporary`), written
    to files of ours in `folder`, which every node reads (0600: the jobs run as this user),
    and removed when the block ends. Ours, not dask-jobqueue's own temporary files: those
    are removed only when Python collects the cluster, and one removed first printed an
    "Exception ignored ... FileNotFoundError" at exit."""
    from distributed import Security

    made = Security.temporary()
    contents = {"ca": made.tls_ca_file, "cert": made.tls_scheduler_cert}
    contents["key"] = made.tls_scheduler_key
    paths: list[str] = []
    try:
        for part, text in contents.items():
            fd, path = tempfile.mkstemp(prefix=f"{CERT_PREFIX}{part}-", suffix=".pem", dir=folder)
            paths.append(path)
            with os.fdopen(fd, "w") as file:
                file.write(str(text))
        yield (paths[0], paths[1], paths[2])
    finally:
        for path in paths:
            Path(path).unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
