"""A running rollout checked against its evidence (monitoring/rollout.py), in the monitor pipeline on each scheduled
check and by `lifecycle rollout`: each decision an MLflow run with the evidence, promote and rollback carried out
in the registry (the servers follow), a rollback raised as an alert."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from components.config import LifecycleConfig
from components.decision import Decision

log = logging.getLogger(__name__)
ROLLOUT_STAGE = "rollout"  # the lifecycle.stage tag of a decision's run


@dataclass
class RolloutCheck:
    evidence: object  # a RolloutEvidence
    decision: Decision[str]
    run_id: str = ""  # the decision's MLflow run, when it was recorded
    alert: str = ""

    def line(self) -> str:
        e = self.evidence
        return (
            f"rollout of version {e.candidate} ({e.mode}, beside champion {e.champion}): "
            f"{self.decision.value} ({self.decision.reason})"
        )


def check_rollout(
    cfg: LifecycleConfig,
    now: dt.datetime | None = None,
    by_hand: Decision[str] | None = None,
    record: bool = True,
) -> RolloutCheck | None:
    """The running rollout's evidence and decision (or `by_hand`, a person's), carried out and recorded unless
    `record` is False (`rollout status`). None when no rollout is running. The tracking URI is set."""
    import mlflow

    from components.data.tables import SkippedRecords
    from components.registry import CANDIDATE, CHAMPION, alias_version, rollout_settings
    from monitoring.prediction_log import read_window
    from monitoring.rollout import decide_rollout, gather_evidence

    client, name = mlflow.MlflowClient(), cfg.tracking.registered_model
    candidate = alias_version(client, name, CANDIDATE)
    if candidate is None:
        return None
    champion = alias_version(client, name, CHAMPION)
    mode, _, started = rollout_settings(client.get_model_version(name, candidate))
    now = now or dt.datetime.now(dt.timezone.utc)
    skipped = SkippedRecords()
    hours = (now - started).total_seconds() / 3600 + 1 / 60  # the whole rollout, and the minute it began in
    predictions = read_window(cfg.predictions_uri(), hours, now, skipped)
    evidence = gather_evidence(predictions, _feedback(cfg, skipped), champion, candidate, mode, started)
    decision = by_hand or decide_rollout(evidence, cfg.deploy.rollout, cfg.gate, now)
    check = RolloutCheck(evidence, decision)
    if record:
        _record(cfg, check, skipped)
    return check


def _record(cfg: LifecycleConfig, check: RolloutCheck, skipped) -> None:
    import mlflow

    from components.registry import end_rollout
    from components.tracking import STAGE_TAG, use_config_experiment
    from monitoring.rollout import PROMOTE, ROLLBACK

    e, decision = check.evidence, check.decision
    experiment_id = use_config_experiment(cfg, mlflow.get_tracking_uri())
    run_name = f"{cfg.name}-rollout-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags={STAGE_TAG: ROLLOUT_STAGE}) as run:
        check.run_id = run.info.run_id
        mlflow.log_metrics(e.metrics() | skipped.metrics())
        mlflow.set_tags(
            {
                "decision": decision.value,
                "decision_reason": decision.reason[:5000],
                "mode": e.mode,
                "champion_version": e.champion,
                "candidate_version": e.candidate,
                "rollout_started": e.started.isoformat(),
            }
        )
        if decision.value in (PROMOTE, ROLLBACK):
            end_rollout(cfg.tracking.registered_model, e.candidate, decision.value == PROMOTE, decision.reason)
        if decision.value == ROLLBACK:
            check.alert = _alert(cfg, check)


def _alert(cfg: LifecycleConfig, check: RolloutCheck) -> str:
    import mlflow

    from monitoring.alerts import new_alert, send_alert

    alert = new_alert(
        cfg.tracking.registered_model,
        check.evidence.candidate,
        check.decision.reason,
        [],
        "",
        check.run_id,
        kind="rollback",
    )
    mlflow.log_artifact(str(send_alert(alert, Path(cfg.work_dir) / "alerts", cfg.monitor.webhook_url)), "alert")
    mlflow.set_tags({"alert": alert.id, "webhook": alert.webhook})
    return alert.id


def _feedback(cfg: LifecycleConfig, skipped):
    """The labelled texts of data.feedback_path (every file of it) as columns text and label, the texts in the
    prediction log's form; a file that cannot be read is skipped and counted."""
    import tempfile

    import pandas as pd

    from components.data.core import feedback_files, table_format
    from components.data.tables import DataError, format_of, read_source
    from components.pii import LogPii

    try:
        files = feedback_files(cfg.data.feedback_path)
    except DataError as err:  # nobody has labelled anything yet: no accuracy evidence, which is no error here
        log.warning("no labelled texts for the rollout's decision: %s", err)
        files = []
    frames = []
    with tempfile.TemporaryDirectory(prefix="lifecycle-feedback-") as scratch:
        for i, uri in enumerate(files):
            try:
                frame = read_source(uri, format_of(uri, table_format(cfg.data)), Path(scratch) / str(i), skipped)
            except DataError as err:
                skipped.object(uri, str(err))
                continue
            columns = [
                next((c for c in (wanted, fallback) if c in frame.columns), None)
                for wanted, fallback in ((cfg.data.text_column, "text"), (cfg.data.label_column, "label"))
            ]
            if None in columns:
                skipped.object(
                    uri,
                    f"no text and label columns ({cfg.data.text_column!r}, "
                    f"{cfg.data.label_column!r}); found {list(frame.columns)}",
                )
                continue
            frames.append(frame[columns].set_axis(["text", "label"], axis=1))
    if not frames:
        return pd.DataFrame(columns=["text", "label"])
    feedback = pd.concat(frames)
    # The log stores each text in serve.log_pii's form: a label joins its text only in that same form.
    return feedback.assign(text=LogPii.of(cfg).text_form()(feedback["text"].astype(str).tolist()))
