"""Running the monitor pipeline repeatedly: here on a timer (`lifecycle watch`), or as a KFP recurring run on a
cluster (`lifecycle schedule`)."""

from __future__ import annotations

import datetime as dt
import logging
import re
import signal
import tempfile
from pathlib import Path

from components.config import ConfigError, LifecycleConfig

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
log = logging.getLogger(__name__)


def parse_interval(every: str) -> int:
    """'90s', '30m', '1h', '1d' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", every)
    if not match or float(match[1]) <= 0:
        raise ConfigError(f"--every {every!r}: expected a positive number and a unit s, m, h or d, e.g. 1h")
    return round(float(match[1]) * UNITS[match[2]])


def kfp_cron(cron: str) -> str:
    """KFP's recurring runs take 6 cron fields (seconds first); the usual 5-field form gets second 0."""
    fields = cron.split()
    if len(fields) == 5:
        return " ".join(["0", *fields])
    if len(fields) == 6:
        return " ".join(fields)
    raise ConfigError(f"--cron {cron!r}: expected 5 fields (minute hour day month weekday) or KFP's 6")


def monitor_once(cfg: LifecycleConfig) -> None:
    """One run of the monitor pipeline, with what it found and did printed."""
    from pipelines.local import run_monitor_locally

    outcome = run_monitor_locally(cfg)
    tags = outcome.tags
    log.info(
        "monitor run %s: drift %s (%s)",
        outcome.monitor_run_id,
        tags.get("drift_detected", "?"),
        tags.get("drift_reason", "no verdict"),
    )
    if tags.get("alert"):
        log.info("alert %s (webhook: %s); retraining: %s", tags["alert"], tags.get("webhook"), tags.get("retraining"))
    if outcome.retraining:
        r = outcome.retraining
        moved = (
            f"champion is now version {r['champion_version']}"
            if r.get("champion_version")
            else f"version {r['candidate_version']} is on trial as the candidate"
            if r.get("candidate_version")
            else "champion unchanged"
        )
        log.info(
            "retraining %s: gate %s (%s); %s",
            tags["retraining_run_id"],
            r.get("gate", "?"),
            r.get("gate_reasons", ""),
            moved,
        )


def watch(cfg: LifecycleConfig, every: str) -> None:
    """The monitor pipeline now and then every `every`, until Ctrl-C or SIGTERM (a run in progress finishes)."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.blocking import BlockingScheduler

    seconds = parse_interval(every)
    scheduler = BlockingScheduler(executors={"default": ThreadPoolExecutor(1)}, timezone="UTC")
    # One at a time; a tick missed while a run goes on is merged into the next one.
    scheduler.add_job(
        monitor_once,
        "interval",
        args=[cfg],
        seconds=seconds,
        max_instances=1,
        coalesce=True,
        next_run_time=dt.datetime.now(dt.timezone.utc),
        id="monitor",
    )

    def stop(signum, _frame):
        log.info("%s: stopping the watch after the run in progress, if any", signal.Signals(signum).name)
        scheduler.shutdown(wait=False)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    log.info("watching: the monitor pipeline every %s; Ctrl-C or SIGTERM stops", every)
    scheduler.start()
    log.info("watch stopped")


def schedule(cfg: LifecycleConfig, host: str, cron: str, experiment: str | None = None) -> str:
    """Create a KFP recurring run of the monitor pipeline; returns a line saying what was created."""
    import kfp
    from kfp import compiler

    from pipelines.local import tracking_uri_for
    from pipelines.monitor_pipeline import build_monitor_pipeline

    tracking_uri = tracking_uri_for(cfg)
    if tracking_uri.startswith("sqlite:"):
        raise ConfigError(
            f"tracking URI {tracking_uri}: a cluster cannot reach this machine's SQLite file; set "
            f"tracking.uri (or MLFLOW_TRACKING_URI) to an MLflow server the cluster can reach"
        )
    client = kfp.Client(host=host)
    name = experiment or cfg.tracking.experiment
    experiment_id = client.create_experiment(name).experiment_id  # returns the existing one when it exists
    with tempfile.TemporaryDirectory() as tmp:
        package = str(Path(tmp) / "monitor_pipeline.yaml")
        compiler.Compiler().compile(build_monitor_pipeline(cfg), package_path=package)
        job = client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=f"{cfg.name}-monitor",
            cron_expression=kfp_cron(cron),
            max_concurrency=1,
            no_catchup=True,
            pipeline_package_path=package,
            params={"config_json": cfg.model_dump_json(), "tracking_uri": tracking_uri},
        )
    return (
        f"recurring run {job.recurring_run_id} ({cfg.name}-monitor, cron '{kfp_cron(cron)}') in KFP experiment "
        f"{name} at {host}"
    )
