"""The sweep's MLflow adapters: `sweep_study` opens the study, `sweep` is a worker whose trials are nested runs of
the sweep's run (params, per-epoch validation loss and accuracy, time, the pruning decision), `sweep_select` puts
the winner's params, metrics and Optuna's figures on the sweep's run and hands its model to stage 5."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from components.config import LifecycleConfig
from components.stages import SWEEP

log = logging.getLogger(__name__)
TRIAL_TAG = "trial"  # a trial run's STAGE_TAG value; its number is the tag trial.number
FIGURES = ("optimization_history.png", "param_importances.png")


def sweep_study(config_json: str, tracking_uri: str, parent_run_id: str, out_dir: str) -> None:
    """Create (or, on a resume, reopen) the study named after the sweep's run; its reference, with this sweep
    run's deadline, goes to out_dir for the workers."""
    from dataclasses import asdict

    import mlflow

    from components.handoff import STUDY, StudyRef, write_json
    from components.stage_output import reported_stage
    from components.sweep import core
    from components.sweep.space import space_as_given

    cfg = LifecycleConfig.model_validate_json(config_json)
    with reported_stage(f"{SWEEP.run_name}-study") as stage:
        url = core.study_storage(cfg, tracking_uri)
        study = core.open_study(cfg, url, parent_run_id)
        said = core.prepare_study(cfg, study)
        space = space_as_given(cfg)
        mlflow.set_tracking_uri(tracking_uri)
        client = mlflow.MlflowClient()
        client.log_dict(parent_run_id, space, "sweep/search_space.json")
        client.set_tag(parent_run_id, "sweep.study", f"{parent_run_id} in {core.hide_password(url)}")
        done = len(core.finished_trials(study))
        stage.result = f"{done} of {cfg.tune.trials} trials done; searching {', '.join(space)}" + "".join(
            f"; {line}" for line in said
        )
    deadline = time.time() + 60 * cfg.tune.timeout_minutes if cfg.tune.timeout_minutes else 0.0
    write_json(out_dir, STUDY, asdict(StudyRef(parent_run_id, deadline)))


def sweep(
    config_json: str, tracking_uri: str, study_dir: str, data_dir: str, init_dir: str, env_dir: str, worker: int
) -> int:
    """One worker: trials until the study has its budget or the deadline passed. Trials train in this process
    (on the task's GPU when it has one)."""

    from components.handoff import FineTuneJob, read_environment, read_study
    from components.reproducibility import apply_environment
    from components.stage_output import reported_stage
    from components.sweep import core

    cfg = LifecycleConfig.model_validate_json(config_json)
    env, ref = read_environment(env_dir), read_study(study_dir)
    parent_run_id = ref.parent_run_id
    apply_environment(env.threads, cfg.seed)
    # A line per trial says what a person needs; the epochs are in the trials' runs.
    logging.getLogger("components.fine_tune").setLevel(logging.WARNING)
    with reported_stage(f"{SWEEP.run_name}-{worker}") as stage:
        study = core.open_study(cfg, core.study_storage(cfg, tracking_uri), parent_run_id)
        job = FineTuneJob(
            init_dir,
            data_dir,
            "",
            "",
            cfg.model,
            cfg.train,
            env.device,
            env.precision,
            cfg.seed,
            env.threads,
            task=cfg.task,
            train_on_prompt=cfg.generation.train_on_prompt,
        )
        ran = core.run_trials(
            cfg,
            study,
            job,
            core.sweep_uri(cfg, parent_run_id),
            ref.deadline,
            _trial_runs(cfg, tracking_uri, parent_run_id),
        )
        stage.result = f"{ran} trials run here; {len(core.finished_trials(study))} of {cfg.tune.trials} done"
    return ran


def _trial_runs(cfg: LifecycleConfig, tracking_uri: str, parent_run_id: str):
    """The trial's nested run: its params, metrics as they come, then its outcome."""
    import mlflow

    from components.sweep.core import TrialLog
    from components.tracking import STAGE_TAG, use_experiment

    @contextlib.contextmanager
    def trial_run(number: int, params: dict):
        use_experiment(tracking_uri, cfg.tracking.experiment)
        mlflow.start_run(
            run_name=f"trial-{number}",
            parent_run_id=parent_run_id,
            tags={STAGE_TAG: TRIAL_TAG, "trial.number": str(number)},
        )
        mlflow.log_params(params)
        record = TrialLog(lambda metrics, step: mlflow.log_metrics(metrics, step=step))
        try:
            yield record
        finally:  # a pruned trial ended as decided (FINISHED, its state a tag); a failed one FAILED
            outcome, state = record.outcome, record.outcome["state"]
            mlflow.set_tags(
                {
                    "trial.state": state,
                    **(
                        {"trial.pruned_at_epoch": str(outcome["pruned_at_epoch"])}
                        if "pruned_at_epoch" in outcome
                        else {}
                    ),
                }
            )
            mlflow.log_metrics(
                {f"best_{key}": outcome[key] for key in ("val_loss", "val_accuracy") if key in outcome}
                | {"trial_seconds": outcome.get("seconds", 0.0), "pruned": float(state == "pruned")}
            )
            mlflow.end_run(
                "FINISHED" if state in ("complete", "pruned") else "KILLED" if state == "interrupted" else "FAILED"
            )

    return trial_run


def sweep_select(config_json: str, tracking_uri: str, parent_run_id: str, out_dir: str) -> str:
    """The winner's model into out_dir; its params, validation metrics and the study's figures on the sweep's
    run; the trials' models and checkpoints removed. Returns the winner's config (what stages 5-7 run with)."""
    import mlflow
    import yaml

    from components.stage_output import reported_stage
    from components.storage import remove
    from components.sweep import core
    from components.sweep.space import params_text

    cfg = LifecycleConfig.model_validate_json(config_json)
    with reported_stage(f"{SWEEP.run_name}-select") as stage:
        url = core.study_storage(cfg, tracking_uri)
        study = core.open_study(cfg, url, parent_run_id)
        sweep, winner_cfg = core.select(cfg, study, url, out_dir)
        mlflow.set_tracking_uri(tracking_uri)
        client = mlflow.MlflowClient()
        for key, value in sweep.winner_params.items():
            client.log_param(parent_run_id, key, value)
        for key, value in {
            "best_val_loss": sweep.best_val_loss,
            "best_val_accuracy": sweep.best_val_accuracy,
            "trials": sweep.trials,
            "trials_complete": sweep.complete,
            "trials_pruned": sweep.pruned,
            "trials_failed": sweep.failed,
        }.items():
            client.log_metric(parent_run_id, key, value)
        client.set_tag(parent_run_id, "sweep.winner", f"trial-{sweep.winner}")
        client.log_dict(parent_run_id, sweep.to_dict(), "sweep/sweep.json")
        client.log_text(
            parent_run_id,
            yaml.safe_dump(winner_cfg.model_dump(mode="json", exclude={"tune"}), sort_keys=False),
            "sweep/best_config.yaml",
        )
        for name, figure in _figures(study).items():
            client.log_figure(parent_run_id, figure, f"sweep/{name}")
        remove(core.sweep_uri(cfg, parent_run_id))
        stage.result = (
            f"trial {sweep.winner} won ({params_text(sweep.winner_params)}): "
            f"val loss {sweep.best_val_loss:.4f}, val accuracy {sweep.best_val_accuracy:.2%}; "
            f"{sweep.complete} complete, {sweep.pruned} pruned, {sweep.failed} failed"
        )
    return winner_cfg.model_dump_json()


def _figures(study) -> dict:
    """Optuna's optimisation history and parameter importances, where the study has enough trials for them."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as plots

    figures = {}
    for name, plot in zip(FIGURES, (plots.plot_optimization_history, plots.plot_param_importances)):
        try:
            with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
                warnings.simplefilter("ignore")
                axes = plot(study)
        except (ValueError, RuntimeError) as err:  # importances need two complete trials that differ
            log.info("no %s: %s", Path(name).stem.replace("_", " "), err)
            continue
        axes.figure.set_size_inches(8, 5)
        axes.figure.tight_layout()
        figures[name] = axes.figure
    return figures
