"""Stage 3's MLflow adapter: the nested run `3-environment` with the facts, the hyper-parameters and pip freeze."""

from __future__ import annotations

from components.config import LifecycleConfig, resolved_hyperparameters
from components.stages import ENVIRONMENT


def environment(config_json: str, tracking_uri: str, parent_run_id: str, out_dir: str) -> dict:
    import mlflow

    from components.environment import core
    from components.handoff import ENVIRONMENT as ENVIRONMENT_FILE
    from components.handoff import write_json
    from components.tracking import flatten, stage_run

    cfg = LifecycleConfig.model_validate_json(config_json)
    hyperparameters = resolved_hyperparameters(cfg.model, cfg.train)
    with stage_run(tracking_uri, cfg.tracking.experiment, parent_run_id, ENVIRONMENT.run_name) as stage:
        env = core.environment(cfg.train.device, cfg.train.precision, cfg.train.threads, cfg.seed, hyperparameters)
        facts = env.to_dict()
        mlflow.log_params(flatten({k: v for k, v in facts.items() if k != "hyperparameters"}))
        mlflow.log_params(flatten(hyperparameters, "hp."))
        mlflow.log_text(core.pip_freeze(), "pip_freeze.txt")
        mlflow.log_dict(facts, ENVIRONMENT_FILE)
        stage.result = f"{env.device}, {env.precision}, {env.threads} threads"
    write_json(out_dir, ENVIRONMENT_FILE, facts)
    return {"device": env.device, "precision": env.precision, "threads": env.threads}
