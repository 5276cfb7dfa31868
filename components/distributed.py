"""Stage 4 in several processes: torchrun starts `train.processes` copies of this module on this machine, each a
rank of torch.distributed (gloo on CPU, NCCL on GPUs, one GPU per rank) running `fine_tune` with DDP.
Importable without MLflow or KFP; rank 0 logs to MLflow only when it is given a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from components.config import ConfigError, ModelConfig, TrainConfig
from components.errors import LifecycleError
from components.handoff import read_train_result
from components.training import TrainResult


class DistributedTrainingError(LifecycleError):
    """The training processes did not all finish: the message gives torchrun's exit code."""


def fine_tune_in_processes(processes: int, init_dir: str, data_dir: str, out_dir: str, checkpoint_uri: str,
                           model_cfg: ModelConfig, train_cfg: TrainConfig, device: str, precision: str, seed: int,
                           threads: int, mlflow_run: Optional[tuple[str, str]] = None) -> TrainResult:
    """`fine_tune` in `processes` ranks under torchrun, `threads` CPU threads shared among them; rank 0 logs
    metrics to `mlflow_run` (tracking URI, run id). Returns rank 0's result."""
    if device == "cuda":
        import torch

        if processes > torch.cuda.device_count():
            raise ConfigError(f"train.processes={processes}: one GPU per process, and this machine has "
                              f"{torch.cuda.device_count()}")
    job = rank_job(init_dir, data_dir, out_dir, checkpoint_uri, model_cfg, train_cfg, device, precision, seed,
                   max(1, threads // processes), mlflow_run)
    run_ranks(job, processes)
    return TrainResult(**read_train_result(out_dir))


def rank_job(init_dir: str, data_dir: str, out_dir: str, checkpoint_uri: str, model_cfg: ModelConfig,
             train_cfg: TrainConfig, device: str, precision: str, seed: int, threads: int,
             mlflow_run: Optional[tuple[str, str]]) -> dict:
    """What every rank is given: `fine_tune`'s arguments, its CPU threads and the MLflow run rank 0 logs to."""
    return {"init_dir": init_dir, "data_dir": data_dir, "out_dir": out_dir, "checkpoint_uri": checkpoint_uri,
            "model_cfg": model_cfg.model_dump(mode="json"), "train_cfg": train_cfg.model_dump(mode="json"),
            "device": device, "precision": precision, "seed": seed, "threads": threads, "mlflow_run": mlflow_run}


def run_ranks(job: dict, processes: Optional[int] = None) -> None:
    """torchrun with the job: `processes` ranks on this machine alone, or with None the nodes, ranks and rendezvous
    that Kubeflow Trainer's torch runtime gives in PET_* variables (torchrun reads them)."""
    with tempfile.TemporaryDirectory(prefix="lifecycle-ddp-") as scratch:
        job_file = Path(scratch) / "job.json"
        job_file.write_text(json.dumps(job))
        finished = subprocess.run(torchrun_command(job_file, processes),
                                  env=os.environ | {"OMP_NUM_THREADS": str(job["threads"])})
    if finished.returncode != 0:
        ranks = f"train.processes={processes}" if processes else "this node's ranks"
        raise DistributedTrainingError(f"{ranks}: torchrun ended with exit code {finished.returncode}; the ranks' "
                                       "own errors are above it in the log")


def torchrun_command(job_file: str | Path, processes: Optional[int] = None) -> list[str]:
    """torchrun with ranks of this module: `processes` on this machine (a rendezvous of its own), or with None as
    the PET_* environment says."""
    alone = ["--standalone", f"--nproc-per-node={processes}"] if processes else []
    return [sys.executable, "-m", "torch.distributed.run", *alone, "-m", "components.distributed", str(job_file)]


def main(job_file: str) -> None:
    """One rank: join the process group, train, leave it."""
    import torch
    import torch.distributed as dist

    from components.console import mark_project_logs
    from components.environment import seed_everything
    from components.training import fine_tune

    job = json.loads(Path(job_file).read_text())
    if job["device"] == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if job["device"] == "cuda" else "gloo")
    try:
        if dist.get_rank() == 0:
            mark_project_logs()
        torch.set_num_threads(job["threads"])
        seed_everything(job["seed"])
        fine_tune(job["init_dir"], job["data_dir"], job["out_dir"], job["checkpoint_uri"],
                  ModelConfig(**job["model_cfg"]), TrainConfig(**job["train_cfg"]), job["device"], job["precision"],
                  job["seed"], _mlflow_logger(job["mlflow_run"]))
    finally:
        dist.destroy_process_group()


def _mlflow_logger(mlflow_run: Optional[list]):
    if not mlflow_run:
        return None
    import mlflow

    tracking_uri, run_id = mlflow_run
    mlflow.set_tracking_uri(tracking_uri)
    return lambda metrics, step: mlflow.log_metrics(metrics, step=step, run_id=run_id)


if __name__ == "__main__":
    main(sys.argv[1])
