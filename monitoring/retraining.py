"""May a drift alert start a retraining now? At most one per cool-down, never two at once.

A retraining is its pipeline's MLflow parent run, tagged with the alert that started it. While it is RUNNING it
holds the claim; one still RUNNING after `retraining_timeout_hours` is taken as crashed, so a dead holder never
blocks retraining for good. The decide-and-claim step runs under a file lock in the work directory, which the
operating system releases when its holder dies.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

TRIGGER_TAG = "lifecycle.trigger"  # "drift" on a retraining's parent run
ALERT_TAG = "lifecycle.alert"  # the alert id
LOCK_FILE = "retraining.lock"


@dataclass
class Retraining:
    run_id: str
    started: dt.datetime  # UTC
    status: str  # MLflow run status


def may_retrain(now: dt.datetime, earlier: list[Retraining], cooldown_hours: float,
                timeout_hours: float) -> tuple[bool, str]:
    timeout, cooldown = dt.timedelta(hours=timeout_hours), dt.timedelta(hours=cooldown_hours)
    for run in earlier:
        if run.status == "RUNNING" and now - run.started < timeout:
            return False, f"retraining {run.run_id} is still running (since {run.started:%Y-%m-%d %H:%M} UTC)"
    recent = [run for run in earlier if now - run.started < cooldown]
    if recent:
        last = max(recent, key=lambda run: run.started)
        return False, (f"retraining {last.run_id} started {_hours(now - last.started)} ago, inside the cool-down "
                       f"of {cooldown_hours:g} h (monitor.cooldown_hours)")
    return True, "no retraining running and none inside the cool-down"


def claim_retraining(cfg, tracking_uri: str, alert_id: str,
                     now: Optional[dt.datetime] = None) -> tuple[Optional[str], str]:
    """(the retraining's parent run id, reason) when allowed, else (None, reason)."""
    import mlflow
    from filelock import FileLock

    from components.tracking import start_parent_run, use_experiment

    Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
    with FileLock(str(Path(cfg.work_dir) / LOCK_FILE), timeout=120):
        experiment_id = use_experiment(tracking_uri, cfg.tracking.experiment, Path(cfg.work_dir) / "mlartifacts")
        runs = mlflow.MlflowClient().search_runs([experiment_id], f"tags.`{TRIGGER_TAG}` = 'drift'",
                                                 order_by=["attributes.start_time DESC"], max_results=20)
        earlier = [Retraining(r.info.run_id, dt.datetime.fromtimestamp(r.info.start_time / 1000, dt.timezone.utc),
                              r.info.status) for r in runs]
        allowed, reason = may_retrain(now or dt.datetime.now(dt.timezone.utc), earlier,
                                      cfg.monitor.cooldown_hours, cfg.monitor.retraining_timeout_hours)
        if not allowed:
            return None, reason
        run_id = start_parent_run(cfg, tracking_uri, tags={TRIGGER_TAG: "drift", ALERT_TAG: alert_id},
                                  run_kind="retrain")
        return run_id, f"retraining started (MLflow run {run_id}): {reason}"


def _hours(delta: dt.timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f} h"
