"""Stage 2's MLflow adapter: the nested run `2-model` with the spec and the parameter counts."""

from __future__ import annotations

from components.config import LifecycleConfig
from components.stages import MODEL


def model(config_json: str, tracking_uri: str, parent_run_id: str, data_dir: str, out_dir: str) -> dict:
    import mlflow

    from components.model import core
    from components.tasks import task_of
    from components.tracking import stage_run

    cfg = LifecycleConfig.model_validate_json(config_json)
    labels = task_of(cfg.task).labels(data_dir)
    with stage_run(tracking_uri, cfg.tracking.experiment, parent_run_id, MODEL.run_name) as stage:
        spec = core.model(cfg.model, labels, cfg.seed, out_dir)
        mlflow.log_params(
            {k: v for k, v in spec.to_dict().items() if k not in ("labels", "source")} | {"task": cfg.task}
        )
        mlflow.log_metrics(
            {"total_parameters": spec.total_parameters, "trainable_parameters": spec.trainable_parameters}
        )
        stage.result = (
            f"{spec.base} ({spec.architecture}), {spec.strategy}: {spec.trainable_parameters:,} of "
            f"{spec.total_parameters:,} parameters train"
        )
    return spec.to_dict()
