"""Stage 4 in several processes: torchrun starts `train.processes` copies of this module on this machine, each a
rank of torch.distributed (gloo on CPU, NCCL on GPUs, one GPU per rank) running `fine_tune` with DDP.
Importable without MLflow or KFP; rank 0 logs to MLflow only when the job names a run."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from components.config import ConfigError
from components.errors import RunFailure
from components.handoff import FineTuneJob, TrainResult, read_job, read_train_result, write_job


class DistributedTrainingError(RunFailure):
    """The training processes did not all finish: the message gives torchrun's exit code."""


def fine_tune_in_processes(job: FineTuneJob, processes: int) -> TrainResult:
    """`fine_tune` in `processes` ranks under torchrun, the job's CPU threads shared among them; rank 0 logs
    metrics to the job's MLflow run. Returns rank 0's result."""
    if job.device == "cuda":
        import torch

        if processes > torch.cuda.device_count():
            raise ConfigError(
                f"train.processes={processes}: one GPU per process, and this machine has {torch.cuda.device_count()}"
            )
    run_ranks(replace(job, threads=max(1, job.threads // processes)), processes)
    return read_train_result(job.out_dir)


def run_ranks(job: FineTuneJob, processes: int | None = None) -> None:
    """torchrun with the job: `processes` ranks on this machine alone, or with None the nodes, ranks and rendezvous
    that Kubeflow Trainer's torch runtime gives in PET_* variables (torchrun reads them)."""
    with tempfile.TemporaryDirectory(prefix="lifecycle-ddp-") as scratch:
        job_file = write_job(scratch, job)
        finished = subprocess.run(
            torchrun_command(job_file, processes), env=os.environ | {"OMP_NUM_THREADS": str(job.threads)}
        )
    if finished.returncode != 0:
        ranks = f"train.processes={processes}" if processes else "this node's ranks"
        raise DistributedTrainingError(
            f"{ranks}: torchrun ended with exit code {finished.returncode}; the ranks' "
            "own errors are above it in the log"
        )


def torchrun_command(job_file: str | Path, processes: int | None = None) -> list[str]:
    """torchrun with ranks of this module: `processes` on this machine (a rendezvous of its own), or with None as
    the PET_* environment says."""
    alone = ["--standalone", f"--nproc-per-node={processes}"] if processes else []
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *alone,
        "-m",
        "components.fine_tune.torchrun",
        str(job_file),
    ]


def main(job_file: str) -> None:
    """One rank: join the process group, train, leave it."""
    import torch
    import torch.distributed as dist

    from components.fine_tune.core import fine_tune
    from components.reproducibility import apply_environment
    from components.stage_output import mark_project_logs

    job = read_job(job_file)
    if job.device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if job.device == "cuda" else "gloo")
    try:
        if dist.get_rank() == 0:
            mark_project_logs()
        apply_environment(job.threads, job.seed)
        fine_tune(job, _mlflow_logger(job.mlflow_run))
    finally:
        dist.destroy_process_group()


def _mlflow_logger(mlflow_run: tuple[str, str] | None):
    if not mlflow_run:
        return None
    import mlflow

    tracking_uri, run_id = mlflow_run
    mlflow.set_tracking_uri(tracking_uri)
    return lambda metrics, step: mlflow.log_metrics(metrics, step=step, run_id=run_id)


if __name__ == "__main__":
    main(sys.argv[1])
