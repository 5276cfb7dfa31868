"""May a drift alert start a retraining now? At most one per cool-down, never two at once, across monitor pods
that share nothing but the MLflow server.

A retraining is its pipeline's MLflow parent run, tagged with the alert that started it. While it is RUNNING it
holds the claim; one still RUNNING after `retraining_timeout_hours` is taken as crashed, so a dead holder never
blocks retraining for good.

Claiming, when several monitors see the same drift at once: each that finds retraining allowed records its claim
(creates the run), waits `claim_settle_seconds` so that claims made at the same moment reach the server, re-reads
the claims, and keeps its own only when no earlier claim (by start time, then run id: the same order for every
reader) would have blocked it. The others withdraw: their runs are tagged withdrawn and ended KILLED, and no rule
counts them. Every claimer orders the same set the same way, so exactly one wins, provided a claim reaches the
server within the settle time and the pods' clocks differ by less than that.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

TRIGGER_TAG = "lifecycle.trigger"  # "drift" on a retraining's parent run
ALERT_TAG = "lifecycle.alert"  # the alert id
CLAIM_TAG = "lifecycle.claim"  # "withdrawn" on a claim that lost to an earlier one


@dataclass
class Retraining:
    run_id: str
    started: dt.datetime  # UTC
    status: str  # MLflow run status

    @property
    def order(self) -> tuple:
        return self.started, self.run_id


def may_retrain(
    now: dt.datetime, earlier: list[Retraining], cooldown_hours: float, timeout_hours: float
) -> tuple[bool, str]:
    timeout, cooldown = dt.timedelta(hours=timeout_hours), dt.timedelta(hours=cooldown_hours)
    for run in earlier:
        if run.status == "RUNNING" and now - run.started < timeout:
            return False, f"retraining {run.run_id} is still running (since {run.started:%Y-%m-%d %H:%M} UTC)"
    recent = [run for run in earlier if now - run.started < cooldown]
    if recent:
        last = max(recent, key=lambda run: run.started)
        return False, (
            f"retraining {last.run_id} started {_hours(now - last.started)} ago, inside the cool-down "
            f"of {cooldown_hours:g} h (monitor.cooldown_hours)"
        )
    return True, "no retraining running and none inside the cool-down"


def keeps_claim(
    own: Retraining, claims: list[Retraining], cooldown_hours: float, timeout_hours: float
) -> tuple[bool, str]:
    """Does `own` win against the claims re-read after recording it? It does when no earlier claim blocks it."""
    earlier = [c for c in claims if c.order < own.order]
    allowed, reason = may_retrain(own.started, earlier, cooldown_hours, timeout_hours)
    return allowed, reason if not allowed else "no earlier claim blocks it"


def claim_retraining(
    cfg,
    tracking_uri: str,
    alert_id: str,
    now: dt.datetime | None = None,
    pause: Callable[[str], None] | None = None,
) -> tuple[str | None, str]:
    """(the retraining's parent run id, reason) when this claimer wins, else (None, reason). `pause(phase)` is
    called after the first read ("decided") and in place of the settle wait ("claimed")."""
    import mlflow

    from components.tracking import start_parent_run, use_config_experiment

    pause = pause or (lambda phase: time.sleep(cfg.monitor.claim_settle_seconds) if phase == "claimed" else None)
    experiment_id = use_config_experiment(cfg, tracking_uri)
    client = mlflow.MlflowClient()
    allowed, reason = may_retrain(
        now or dt.datetime.now(dt.timezone.utc),
        retrainings(client, experiment_id),
        cfg.monitor.cooldown_hours,
        cfg.monitor.retraining_timeout_hours,
    )
    if not allowed:
        return None, reason
    pause("decided")
    run_id = start_parent_run(cfg, tracking_uri, tags={TRIGGER_TAG: "drift", ALERT_TAG: alert_id}, run_kind="retrain")
    pause("claimed")
    claims = retrainings(client, experiment_id)
    own = next(c for c in claims if c.run_id == run_id)
    kept, why = keeps_claim(own, claims, cfg.monitor.cooldown_hours, cfg.monitor.retraining_timeout_hours)
    if not kept:
        client.set_tag(run_id, CLAIM_TAG, "withdrawn")
        client.set_terminated(run_id, status="KILLED")
        return None, f"another monitor claimed the retraining first: {why}"
    return run_id, f"retraining started (MLflow run {run_id}): {reason}"


def retrainings(client, experiment_id: str) -> list[Retraining]:
    """The retraining claims of the experiment, newest first, withdrawn ones left out."""
    runs = client.search_runs(
        [experiment_id], f"tags.`{TRIGGER_TAG}` = 'drift'", order_by=["attributes.start_time DESC"], max_results=100
    )
    return [
        Retraining(r.info.run_id, dt.datetime.fromtimestamp(r.info.start_time / 1000, dt.timezone.utc), r.info.status)
        for r in runs
        if r.data.tags.get(CLAIM_TAG) != "withdrawn"
    ]


def _hours(delta: dt.timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f} h"
