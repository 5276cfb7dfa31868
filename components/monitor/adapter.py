"""Stage 7's MLflow adapters: `monitor`, the nested run `7-monitor` of a training run (the new champion's
reference against the test split), and `monitor_traffic`, the monitor pipeline's check of the champion against
served traffic, which raises alerts and claims retrainings."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from components.config import LifecycleConfig
from components.stages import MONITOR, ROLLOUT_CHECK, TRAFFIC_CHECK

log = logging.getLogger(__name__)


def monitor(
    config_json: str, tracking_uri: str, parent_run_id: str, data_dir: str, bundle_dir: str, out_dir: str
) -> dict:
    """The test split is held-out and in distribution: no drift is the expected verdict."""
    import mlflow
    import pandas as pd

    from components.handoff import read_redacted, read_texts
    from components.pii import LogPii
    from components.tracking import stage_run
    from monitoring import core

    cfg = LifecycleConfig.model_validate_json(config_json)
    with stage_run(tracking_uri, cfg.tracking.experiment, parent_run_id, MONITOR.run_name) as stage:
        texts = LogPii.of(cfg).drift_texts(read_texts(data_dir, "test"), read_redacted(data_dir, "test"))
        test = pd.DataFrame({"text": texts})  # a generator's: prompts
        result = core.monitor(bundle_dir, test, cfg, out_dir)
        _log_drift(result, out_dir, "test split")
        stage.result = f"the test split against the champion's reference: {core.verdict(result)}"
    mlflow.MlflowClient().set_tag(parent_run_id, "test_split_drift", str(result.drift_detected).lower())
    return {"drift_detected": result.drift_detected, "drifted_share": result.drifted_share, "reason": result.reason}


def open_monitor_run(cfg: LifecycleConfig, tracking_uri: str) -> str:
    import time

    import mlflow

    from components.tracking import STAGE_TAG, use_config_experiment

    experiment_id = use_config_experiment(cfg, tracking_uri)
    name = f"{cfg.name}-monitor-{time.strftime('%Y%m%d-%H%M%S')}"
    return (
        mlflow.MlflowClient().create_run(experiment_id, run_name=name, tags={STAGE_TAG: MONITOR.run_name}).info.run_id
    )


def monitor_traffic(
    config_json: str, tracking_uri: str, current_path: str, monitor_run_id: str, out_dir: str, act_on_drift: bool = True
) -> str:
    """The champion against the current window. With `act_on_drift` (the monitor pipeline), first the decision on a
    running rollout, carried out; then on drift an alert, and a retraining when the cool-down and the other
    claimers allow. Returns the retraining's parent run id, or '' when none starts. The champion is downloaded
    into a scratch folder; the alert is an MLflow artifact (and a local copy)."""
    import tempfile

    import mlflow

    from components.handoff import model_uri
    from components.registry import CHAMPION, resolve_bundle
    from components.skipped_records import SkippedRecords
    from components.stage_output import reported_stage
    from components.tracking import use_config_experiment
    from monitoring import core
    from monitoring.rollout import check_rollout

    cfg = LifecycleConfig.model_validate_json(config_json)
    use_config_experiment(cfg, tracking_uri)
    if act_on_drift:
        with reported_stage(ROLLOUT_CHECK) as stage:
            rollout = check_rollout(cfg)
            stage.result = rollout.line() if rollout else "no rollout running"
    run_id = monitor_run_id or open_monitor_run(cfg, tracking_uri)
    with (
        reported_stage(TRAFFIC_CHECK) as stage,
        mlflow.start_run(run_id=run_id),
        tempfile.TemporaryDirectory(prefix="lifecycle-monitor-") as scratch,
    ):
        bundle, name, version = resolve_bundle(model_uri(cfg.tracking.registered_model, CHAMPION), scratch)
        mlflow.set_tag("model_version", version)
        skipped = SkippedRecords()
        try:
            current, source = core.current_texts(cfg, current_path or None, skipped)
        finally:  # what was skipped, also when nothing usable was left
            mlflow.log_metrics(skipped.metrics())
        result = core.monitor(bundle, current, cfg, out_dir)
        _log_drift(result, out_dir, source)
        log.info("\n".join(core.feature_lines(result)))
        damaged = f" ({skipped.summary()} skipped)" if skipped.summary() else ""
        stage.result = f"{len(current)} texts of {source}{damaged} against version {version}: {core.verdict(result)}"
        if not (result.drift_detected and act_on_drift):
            return ""
        return _raise_alert(cfg, tracking_uri, result, name, version, out_dir, run_id)


def _raise_alert(
    cfg: LifecycleConfig, tracking_uri: str, result, name: str, version: str, out_dir: str, run_id: str
) -> str:
    """The alert, sent and logged, and the retraining claim; returns the retraining's parent run id or ''."""
    import mlflow

    from monitoring.alerts import new_alert, send_alert
    from monitoring.retraining import claim_retraining

    alert = new_alert(name, version, result.reason, [asdict(f) for f in result.drifted()], out_dir, run_id)
    retraining_run, alert.retraining = claim_retraining(cfg, tracking_uri, alert.id)
    if retraining_run and cfg.task == "generation":  # a generator learns from its responses' corrections
        from components.skipped_records import SkippedRecords
        from monitoring.generation_rollout import write_corrected_examples

        try:  # the retraining is claimed: a failure here must not leave it unstarted or the alert unsent
            log.info("%s", write_corrected_examples(cfg, SkippedRecords()))
        except Exception as err:
            log.warning("the corrected responses were not written for the retraining: %s: %s", type(err).__name__, err)
    mlflow.log_artifact(str(send_alert(alert, Path(cfg.work_dir) / "alerts", cfg.monitor.webhook_url)), "alert")
    mlflow.set_tags(
        {
            "alert": alert.id,
            "retraining": alert.retraining,
            "webhook": alert.webhook,
            "retraining_run_id": retraining_run or "",
        }
    )
    log.info("alert %s: %s", alert.id, alert.retraining)
    return retraining_run or ""


def _log_drift(result, out_dir: str, source: str) -> None:
    import mlflow

    mlflow.log_metrics(
        {
            "drift_detected": float(result.drift_detected),
            "drifted_share": result.drifted_share,
            "current_size": result.current_size,
        }
        | {f"drift_score.{f.feature}": f.score for f in result.features}
    )
    mlflow.set_tags(
        {
            "drift_detected": str(result.drift_detected).lower(),
            "drift_reason": result.reason[:5000],
            "current_source": source,
        }
    )
    mlflow.log_artifacts(out_dir, "drift")
