"""MLflow plumbing shared by the stages: one parent run per pipeline run, one nested run per stage."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from components.handoff import CONFIG

STAGE_TAG = "lifecycle.stage"
SWEEP_RUN_KIND = "sweep"  # the run kind of `lifecycle tune`
# What the MLflow UI opens an experiment on: its GenAI overview of traces unless the experiment's kind says
# otherwise. MLflow 3.17's UI takes the kind from its GenAI / Model training switch instead (the browser's choice,
# GenAI at first, or the link's workflowType), so the links printed carry that too (ui_link).
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"


def default_tracking_uri(work_dir: str | Path) -> str:
    return f"sqlite:///{Path(work_dir).resolve() / 'mlflow.db'}"


def is_tracking_server(tracking_uri: str) -> bool:
    """A remote MLflow server (which has its own artifact store and UI), not a local database."""
    return tracking_uri.startswith(("http://", "https://", "databricks"))


def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """A tracking server that does not answer is a clear error now, not minutes of MLflow's retries later."""
    import requests

    from components.errors import LifecycleError

    if not is_tracking_server(tracking_uri) or tracking_uri.startswith("databricks"):
        return
    try:
        requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout)
    except requests.RequestException as err:
        raise LifecycleError(
            f"the MLflow tracking server {tracking_uri} does not answer ({type(err).__name__}); "
            f"start it, or point MLFLOW_TRACKING_URI or tracking.uri at one that runs"
        ) from None


def ui_link(ui: str, experiment_id: str, run_id: str = "") -> str:
    """The MLflow UI's page of an experiment (or of one of its runs) in its Model training view."""
    return (
        f"{ui.rstrip('/')}/#/experiments/{experiment_id}"
        + (f"/runs/{run_id}" if run_id else "")
        + "?workflowType=machine_learning"
    )


def artifact_location(cfg, tracking_uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: the one configured; else, with a tracking server, none of the
    client's (the server's own store, so no artifact lands on the disk of the pod that logged it); else, with a
    local store, work_dir/mlartifacts."""
    if cfg.tracking.artifact_location:
        return cfg.tracking.artifact_location
    if is_tracking_server(tracking_uri):
        return None
    return (Path(cfg.work_dir).resolve() / "mlartifacts").as_uri()


def start_from_empty_store(tracking_uri: str) -> None:
    """A new SQLite store starts as a copy of an empty one, with MLflow's tables and no rows, made once per MLflow
    version in the user's cache: MLflow makes them by running its dozens of schema migrations, about 1.5 s of every
    new work directory's first run. Where no copy can be made, MLflow makes them as before."""
    if not tracking_uri.startswith("sqlite:///") or "?" in tracking_uri:
        return
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    empty = None if path.exists() else _empty_store()
    if empty is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    shutil.copyfile(empty, partial)
    with contextlib.suppress(FileExistsError):  # another process made the store first: it stands
        os.link(partial, path)
    partial.unlink()


def _empty_store() -> Path | None:
    import mlflow
    import sqlalchemy

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llm-lifecycle"
    empty = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if empty.is_file():
        return empty
    partial = cache / f".{empty.name}.{os.getpid()}"
    try:
        from mlflow.store.db.utils import _initialize_tables

        cache.mkdir(parents=True, exist_ok=True)
        engine = sqlalchemy.create_engine(f"sqlite:///{partial}")
        _initialize_tables(engine)  # what MLflow runs on a new store
        engine.dispose()
        os.replace(partial, empty)
        return empty
    except (ImportError, OSError, sqlalchemy.exc.SQLAlchemyError):
        partial.unlink(missing_ok=True)
        return None


def use_config_experiment(cfg, tracking_uri: str) -> str:
    """use_experiment for the config's experiment and artifact location."""
    return use_experiment(tracking_uri, cfg.tracking.experiment, artifact_location(cfg, tracking_uri))


def use_experiment(tracking_uri: str, experiment: str, location: str | None = None) -> str:
    """Point MLflow at the store and the experiment (created with its artifacts at `location` when given)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    start_from_empty_store(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        if KIND_TAG not in found.tags:  # made before this project set it
            mlflow.MlflowClient().set_experiment_tag(found.experiment_id, KIND_TAG, KIND)
        mlflow.set_experiment(experiment_id=found.experiment_id)
        return found.experiment_id
    try:
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location, tags={KIND_TAG: KIND})
    except MlflowException as err:  # another pod created it at the same moment
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@contextlib.contextmanager
def stage_run(tracking_uri: str, experiment: str, parent_run_id: str, stage: str) -> Iterator:
    """A nested run under the pipeline's parent run, marked FAILED if the stage raises; the stage's start, end
    and failure are reported (components.stage_output), and the StageReport it yields takes its key result."""
    import mlflow

    from components.stage_output import reported_stage

    with reported_stage(stage) as report:
        use_experiment(tracking_uri, experiment)
        with mlflow.start_run(run_name=stage, parent_run_id=parent_run_id, tags={STAGE_TAG: stage}):
            yield report


def flatten(mapping: dict, prefix: str = "") -> dict:
    """{"train": {"epochs": 3}} -> {"train.epochs": 3}: how params compare well in the MLflow UI."""
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def parent_run_name(cfg, kind: str = "") -> str:
    import time

    return "-".join(filter(None, [cfg.name, kind, cfg.model.strategy, time.strftime("%Y%m%d-%H%M%S")]))


def start_parent_run(cfg, tracking_uri: str, tags: dict | None = None, run_kind: str = "") -> str:
    """Create the pipeline run's parent run with the flattened config as params; returns its id (left open).
    `run_kind` goes into the run name (e.g. "retrain"); `tags` are added to the run's tags. A sweep's run leaves out
    the keys it searches: the winner's values go there once it is chosen."""
    import mlflow

    from components.sweep.space import search_space

    experiment_id = use_config_experiment(cfg, tracking_uri)
    client = mlflow.MlflowClient()
    tags = {
        "strategy": cfg.model.strategy,
        "base_model": cfg.model.base,
        "mlflow.runName": parent_run_name(cfg, run_kind),
    } | (tags or {})
    run = client.create_run(experiment_id, tags=tags, run_name=tags["mlflow.runName"])
    searched = search_space(cfg) if run_kind == SWEEP_RUN_KIND else {}
    # A training run trains with no tune section; a sweep's storage URL may hold a password.
    dumped = cfg.model_dump(mode="json", exclude={"tune": {"storage", "space"}} if searched else {"tune"})
    params = {k: v for k, v in flatten(dumped).items() if k not in searched}
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in params.items()])
    client.log_text(run.info.run_id, cfg.model_dump_json(indent=2), CONFIG)
    return run.info.run_id
