"""Stage 4's MLflow adapter: the nested run `4-fine-tune` with the loss per step, validation per epoch and the
result; the training itself runs where placement.decide_placement says."""

from __future__ import annotations

from components.config import LifecycleConfig
from components.stages import FINE_TUNE


def fine_tune(
    config_json: str, tracking_uri: str, parent_run_id: str, data_dir: str, init_dir: str, env_dir: str, out_dir: str
) -> dict:
    import mlflow

    from components.fine_tune.placement import decide_placement
    from components.handoff import TRAIN_RESULT, FineTuneJob, read_environment
    from components.reproducibility import apply_environment
    from components.storage import join
    from components.tracking import stage_run

    cfg = LifecycleConfig.model_validate_json(config_json)
    env = read_environment(env_dir)
    apply_environment(env.threads, cfg.seed)
    placement = decide_placement(
        cfg.train.nodes, cfg.train.processes, env.device, cfg.kfp.gpu.count, cfg.train.privacy is not None
    )
    with stage_run(tracking_uri, cfg.tracking.experiment, parent_run_id, FINE_TUNE.run_name) as stage:
        mlflow.log_params(
            {"processes": placement.value.processes, "nodes": cfg.train.nodes, "placement": placement.value.where}
        )
        mlflow.set_tag("placement_reason", placement.reason)
        job = FineTuneJob(
            init_dir,
            data_dir,
            out_dir,
            join(cfg.checkpoints_uri(), parent_run_id),
            cfg.model,
            cfg.train,
            env.device,
            env.precision,
            cfg.seed,
            env.threads,
            (tracking_uri, mlflow.active_run().info.run_id),
            cfg.task,
            cfg.generation.train_on_prompt,
        )
        result = _train(cfg, parent_run_id, placement.value, job)
        mlflow.log_metrics(
            {
                "train_seconds": result.train_seconds,
                "samples_per_second": result.samples_per_second,
                "best_epoch": result.best_epoch,
                "best_val_loss": result.best_val_loss,
                "best_val_accuracy": result.best_val_accuracy,
            }
            | ({"epsilon_spent": result.epsilon_spent} if result.epsilon_spent is not None else {})
        )
        mlflow.log_dict(result.to_dict(), TRAIN_RESULT)
        stage.result = _summary(cfg.task, result)
    return {k: v for k, v in result.to_dict().items() if k != "history"}


def _summary(task_name: str, result) -> str:
    """The stage's closing line."""
    from components.tasks import task_of

    task = task_of(task_name)
    return (
        f"best epoch {result.best_epoch} of {result.epochs_run}: val loss {result.best_val_loss:.4f}, "
        f"{task.measured(result.best_val_loss, result.best_val_accuracy)}; {result.samples_per_second:.0f} "
        f"{task.unit}/s"
    )


def _train(cfg: LifecycleConfig, parent_run_id: str, placement, job):
    """The job where the placement says; in this process, metrics go to the active run as they come."""
    import mlflow

    if placement.where == "train_job":
        from components.fine_tune.trainjob import fine_tune_on_train_job

        return fine_tune_on_train_job(cfg, parent_run_id, placement.processes, job)
    if placement.where == "processes":
        from components.fine_tune.torchrun import fine_tune_in_processes

        return fine_tune_in_processes(job, placement.processes)
    from components.fine_tune.core import fine_tune as train

    return train(job, lambda metrics, step: mlflow.log_metrics(metrics, step=step))
