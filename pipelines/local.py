"""Running the training pipeline on this machine through kfp.local, inside an MLflow parent run."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from components.config import LifecycleConfig
from components.tracking import default_tracking_uri
from pipelines.warm_tasks import warm_tasks


class PipelineFailed(Exception):
    """A task of a pipeline run through kfp.local failed (its own report says why); `outcome` says what the
    failure left as it was."""

    def __init__(self, message: str, outcome: str):
        super().__init__(message)
        self.outcome = outcome


@dataclass
class LocalRun:
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    model_version: str  # registered by stage 5
    champion_version: str | None  # registered and promoted by stage 6, when the gate passed
    candidate_version: str | None  # or registered as the candidate of a rollout on live traffic
    registered_model: str
    gate: str
    artifacts_dir: str
    sweep_winner: str | None = None  # `lifecycle tune`: the trial whose model went on


def tracking_uri_for(cfg: LifecycleConfig, environ=os.environ) -> str:
    """MLFLOW_TRACKING_URI wins (as MLflow users expect), then the config, then SQLite in the work directory."""
    return environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri or default_tracking_uri(cfg.work_dir)


@warm_tasks()  # from the start: the warm process imports while this one opens the run
def run_locally(
    cfg: LifecycleConfig,
    resume_run_id: str | None = None,
    on_start: Callable[[str], None] = lambda parent_run_id: None,
    sweep: bool = False,
) -> LocalRun:
    """Run stages 1-7 (with `sweep`, stage 4 as a search) with kfp.local's subprocess runner in this environment;
    the parent run is FAILED if any stage fails, and a resumed run reuses its parent run and its fine-tuning
    checkpoint (or its study). `on_start` is told the parent run's id before the first stage starts."""
    import mlflow

    from components.tracking import SWEEP_RUN_KIND, start_parent_run, use_config_experiment
    from pipelines.training_pipeline import build_sweep_pipeline, build_training_pipeline

    pipeline_root = Path(cfg.work_dir) / "kfp"
    uri = tracking_uri_for(cfg)
    experiment_id = use_config_experiment(cfg, uri)
    client = mlflow.MlflowClient()
    if resume_run_id:
        _close_interrupted_stages(client, experiment_id, resume_run_id)
        client.update_run(resume_run_id, status="RUNNING")
        parent = resume_run_id
    else:
        parent = start_parent_run(cfg, uri, run_kind=SWEEP_RUN_KIND if sweep else "")
    on_start(parent)
    build = build_sweep_pipeline if sweep else build_training_pipeline
    try:
        run_pipeline(build(cfg), cfg, parent, tracking_uri=uri, parent_run_id=parent)
    except BaseException as err:
        client.set_terminated(parent, status="FAILED")
        if isinstance(err, PipelineFailed):
            promoted = client.get_run(parent).data.tags.get("champion_version")
            err.outcome = (
                f"version {promoted} became the champion before the failure"
                if promoted
                else "the champion is unchanged"
            ) + f"; MLflow run {parent} is marked FAILED"
        raise
    client.set_terminated(parent, status="FINISHED")
    runs = sorted(
        pipeline_root.glob(f"{cfg.name}-{'sweep' if sweep else 'training'}-*"), key=lambda p: p.stat().st_mtime
    )
    tags = client.get_run(parent).data.tags
    return LocalRun(
        tracking_uri=uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        model_version=tags["model_version"],
        champion_version=tags.get("champion_version"),
        candidate_version=tags.get("candidate_version"),
        registered_model=cfg.tracking.registered_model,
        gate=tags["gate"],
        artifacts_dir=str(runs[-1]) if runs else str(pipeline_root),
        sweep_winner=tags.get("sweep.winner"),
    )


def run_pipeline(pipeline, cfg: LifecycleConfig, run_id: str, **arguments) -> None:
    """Run a pipeline of this project with kfp.local's subprocess runner in this environment; the command's log
    of it goes to the MLflow run `run_id`, whatever the outcome."""
    from kfp import local

    from pipelines.terminal import active, log_since

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(Path(cfg.work_dir) / "kfp"))
    start = active().position() if active() else 0
    try:
        with warnings.catch_warnings():  # kfp.local warns that our image is not a python image; it is not used
            warnings.simplefilter("ignore", RuntimeWarning)
            pipeline(config_json=cfg.model_dump_json(), **arguments)
    except RuntimeError as err:  # how kfp.local says that a task failed
        raise PipelineFailed(str(err), f"MLflow run {run_id} is marked FAILED") from err
    finally:
        log_since(run_id, start)


@dataclass
class MonitorOutcome:
    monitor_run_id: str
    tags: dict  # the monitor run's: drift_detected, drift_reason, alert, retraining, retraining_run_id, ...
    retraining: dict | None = None  # the retraining run's tags (gate, gate_reasons, champion_version, ...)


@warm_tasks()
def run_monitor_locally(cfg: LifecycleConfig) -> MonitorOutcome:
    """One run of the monitor pipeline (the window from cfg.monitor): drift check, and on drift an alert and (when
    allowed) a retraining, whose MLflow parent run is closed here as FINISHED or FAILED."""
    import mlflow

    from components.monitor.adapter import open_monitor_run
    from pipelines.monitor_pipeline import build_monitor_pipeline

    uri = tracking_uri_for(cfg)
    monitor_run = open_monitor_run(cfg, uri)
    client = mlflow.MlflowClient()
    status = "FINISHED"
    try:
        run_pipeline(build_monitor_pipeline(cfg), cfg, monitor_run, tracking_uri=uri, monitor_run_id=monitor_run)
    except BaseException:
        status = "FAILED"
        raise
    finally:
        finished = client.get_run(monitor_run)
        tags = finished.data.tags
        if finished.info.status == "RUNNING":  # the check itself did not get to end it
            client.set_terminated(monitor_run, status="FAILED")
        retraining_run = tags.get("retraining_run_id")
        if retraining_run:
            client.set_terminated(retraining_run, status=status)
    retraining = client.get_run(retraining_run).data.tags if retraining_run else None
    return MonitorOutcome(monitor_run, tags, retraining)


def config_of_run(run_id: str, tracking_uri: str) -> LifecycleConfig:
    """The exact config an earlier run used (logged on its parent run), for --resume."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    from components.handoff import run_config_uri

    return LifecycleConfig.model_validate_json(mlflow.artifacts.load_text(run_config_uri(run_id)))


def _close_interrupted_stages(client, experiment_id: str, parent_run_id: str) -> None:
    stale = client.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'"
    )
    for run in stale:
        client.set_terminated(run.info.run_id, status="KILLED")
