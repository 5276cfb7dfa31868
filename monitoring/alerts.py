"""Alerts (drift, and a rollout rolled back): a log line, a JSON file under work_dir/alerts, and a POST to a
Slack/Teams incoming webhook."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from components.handoff import ALERT, write_json

log = logging.getLogger(__name__)
WEBHOOK_TIMEOUT_S = 10


@dataclass
class Alert:
    id: str
    created: str  # ISO 8601, UTC
    model: str
    model_version: str
    summary: str  # the drift verdict's reason
    drifted_features: list[dict] = field(default_factory=list)  # feature, kind, method, score, threshold
    report: str = ""  # the drift report's folder
    monitor_run_id: str = ""
    retraining: str = ""  # what the alert started, or why not
    webhook: str = "not configured"  # or "sent", or "failed: <why>"
    kind: str = "drift"  # or "rollback": a rollout's candidate (model_version) was rolled back

    def message(self) -> str:
        if self.kind == "rollback":
            return (
                f":warning: Rollout of {self.model} v{self.model_version} rolled back: {self.summary}. The "
                f"champion is unchanged. Alert {self.id}, MLflow run {self.monitor_run_id}."
            )
        features = ", ".join(f"{f['feature']} ({f['method']} {f['score']:.3g})" for f in self.drifted_features)
        return (
            f":warning: Drift on {self.model} v{self.model_version}: {self.summary}. Drifted: {features or '-'}. "
            f"Retraining: {self.retraining or 'not decided'}. Alert {self.id}, MLflow run {self.monitor_run_id}."
        )

    def to_dict(self) -> dict:
        return asdict(self)


def new_alert(
    model: str,
    model_version: str,
    summary: str,
    drifted_features: list[dict],
    report: str,
    monitor_run_id: str,
    kind: str = "drift",
) -> Alert:
    now = dt.datetime.now(dt.timezone.utc)
    alert_id = f"{kind}-{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    return Alert(
        alert_id,
        now.isoformat(timespec="seconds"),
        model,
        model_version,
        summary,
        drifted_features,
        report,
        monitor_run_id,
        kind=kind,
    )


def send_alert(alert: Alert, alerts_dir: str | Path, webhook_url: str | None = None) -> Path:
    """Log the alert, POST it to the webhook when one is configured, write alerts_dir/<id>.json. A failing
    webhook is logged and recorded in the file; it never stops the monitor."""
    import requests

    log.warning("%s ALERT %s", alert.kind.upper(), alert.message())
    if webhook_url:
        try:
            response = requests.post(webhook_url, json={"text": alert.message()}, timeout=WEBHOOK_TIMEOUT_S)
            response.raise_for_status()
            alert.webhook = "sent"
        except requests.RequestException as err:
            alert.webhook = f"failed: {err}"
            log.error("alert %s: the webhook failed: %s", alert.id, err)
    return write_json(alerts_dir, ALERT.format(id=alert.id), alert.to_dict())
