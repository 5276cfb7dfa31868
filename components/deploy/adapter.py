"""Stage 6's MLflow adapter (it runs only when stage 5's gate passed): the nested run `6-deploy` with the parity
and format report; the bundle published as the champion, or as the candidate of a rollout (components.registry). A
classifier's export is core.py's, a generator's generator_adapter.py's."""

from __future__ import annotations

import functools
from pathlib import Path

from components.config import LifecycleConfig
from components.stages import DEPLOY


def deploy(
    config_json: str,
    tracking_uri: str,
    parent_run_id: str,
    data_dir: str,
    model_dir: str,
    challenger_version: str,
    out_dir: str,
    evaluation_dir: str | None = None,
) -> dict:
    import mlflow

    from components.deploy.generator_adapter import publish_generator
    from components.handoff import DEPLOYMENT
    from components.registry import challenger
    from components.tracking import stage_run

    cfg = LifecycleConfig.model_validate_json(config_json)
    export = (
        publish_generator
        if cfg.task == "generation"
        else functools.partial(_deploy_classifier, evaluation_dir=evaluation_dir)
    )
    with stage_run(tracking_uri, cfg.tracking.experiment, parent_run_id, DEPLOY.run_name) as stage:
        source = challenger(cfg.tracking.registered_model, challenger_version)
        try:
            report, (version, demoted, rollout), found = export(cfg, source, data_dir, model_dir, out_dir)
        finally:  # the parity report matters most when parity failed
            if (Path(out_dir) / DEPLOYMENT).is_file():
                mlflow.log_artifact(str(Path(out_dir) / DEPLOYMENT))
        mlflow.set_tags({"model_version": version, "previous_champion": demoted or "none", "rollout": rollout})
        stage.result = f"{found}; {_reached(version, demoted, rollout)}"
    mlflow.MlflowClient().set_tag(
        parent_run_id, "champion_version" if rollout == "direct" else "candidate_version", version
    )
    return report.to_dict() | {"model_version": version, "previous_champion": demoted, "rollout": rollout}


def _deploy_classifier(
    cfg: LifecycleConfig, source, data_dir: str, model_dir: str, out_dir: str, evaluation_dir: str | None
):
    """(report, what publishing gave, what was found) for a classifier: core.deploy (reusing stage 5's logits from
    `evaluation_dir`), then the champion."""
    from components.deploy import core
    from components.handoff import TEMPERATURE_TAG, bundle_dir, read_labels, read_texts
    from components.pii import LogPii
    from components.registry import publish_champion

    temperature = float(source.tags.get(TEMPERATURE_TAG, 1.0))  # stage 5's calibration, served as it decided
    report = core.deploy(
        model_dir,
        data_dir,
        out_dir,
        cfg.monitor.reference_size,
        cfg.seed,
        temperature=temperature,
        log_pii=LogPii.of(cfg),
        input_pii=cfg.pii.model_dump() if cfg.data.pii == "redact" else None,
        evaluation_dir=evaluation_dir,
    )
    _log_report(report, temperature)
    published = publish_champion(
        source,
        str(bundle_dir(out_dir)),
        read_labels(model_dir),
        {"format": f"onnx-{report.served}", "parity_max_abs_logit_diff": f"{report.max_abs_logit_diff:.2e}"},
        read_texts(data_dir, "test", 3),
        cfg.deploy.rollout,
    )
    found = f"ONNX parity max |logit diff| {report.max_abs_logit_diff:.1e}; serves {report.served} ({report.reason})"
    return report, published, found


def _log_report(report, temperature: float) -> None:
    import mlflow

    mlflow.log_metrics({k: v for k, v in report.to_dict().items() if isinstance(v, float)})
    mlflow.log_params(
        {
            "served": report.served,
            "served_reason": report.reason,
            "temperature": temperature,
            "reference_pii": report.reference_pii,
        }
    )


def _reached(version: str, demoted: str | None, rollout: str) -> str:
    """Where the new version stands: the champion, or the candidate of a rollout."""
    if rollout == "direct":
        return f"version {version} is the champion" + (f" (was {demoted})" if demoted else "")
    return f"version {version} is the candidate of a {rollout} rollout"
