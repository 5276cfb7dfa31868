"""What every rollout's decision shares, whatever the model: its three outcomes, the rollback of a candidate that
fails or is slow, waiting for evidence until the deadline, the p99 latency of a version's answers, and the feedback
files the evidence joins. A classifier's evidence is in monitoring/rollout.py, a generator's in
monitoring/generation_rollout.py."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from components.decision import Decision

PROMOTE, ROLLBACK, WAIT = "promote", "rollback", "wait"
log = logging.getLogger(__name__)


def latency_text(ms: float | None) -> str:
    """A p99 latency as `lifecycle rollout` prints it; `-` for a version with no answers."""
    return f"{ms:.1f} ms" if ms is not None else "-"


def failure_rollback(candidate: str, failed: int, scored: int, rollout, unit: str = "texts") -> Decision[str] | None:
    """A rollback when the candidate failed on more than rollout.max_error_rate of what it was given."""
    rate = failed / scored if scored else 0.0
    if failed and rate > rollout.max_error_rate:
        return Decision(
            ROLLBACK,
            f"version {candidate} failed on {failed} of {scored} {unit} ({rate:.1%}; at most "
            f"{rollout.max_error_rate:.1%})",
        )
    return None


def latency_rollback(
    candidate: str, candidate_p99_ms: float | None, champion_p99_ms: float | None, rollout
) -> Decision[str] | None:
    """A rollback when the candidate's p99 latency is over rollout.max_p99_ratio times the champion's."""
    if champion_p99_ms and candidate_p99_ms and candidate_p99_ms > rollout.max_p99_ratio * champion_p99_ms:
        return Decision(
            ROLLBACK,
            f"version {candidate}'s p99 latency {candidate_p99_ms:.1f} ms is over "
            f"{rollout.max_p99_ratio:g}x the champion's {champion_p99_ms:.1f} ms",
        )
    return None


def wait_or_deadline(why: str, counts: str, started: dt.datetime, rollout, now: dt.datetime) -> Decision[str]:
    """Wait for more evidence; past the deadline, too little evidence ends the rollout by rollout.on_deadline."""
    deadline = started + dt.timedelta(hours=rollout.deadline_hours)
    if now < deadline:
        return Decision(WAIT, f"{why}; deciding by {deadline:%Y-%m-%d %H:%M} UTC ({counts})")
    return Decision(
        rollout.on_deadline,
        f"the deadline {deadline:%Y-%m-%d %H:%M} UTC passed and {why} "
        f"(deploy.rollout.on_deadline: {rollout.on_deadline}; {counts})",
    )


def verdict_decision(verdict: str, gate, wait, worse: str, not_yet: str, promoted: str) -> Decision[str]:
    """The end that stage 5's paired verdict (better, worse or neither) gives a rollout: worse rolls back (`worse`);
    under gate.champion_rule better, anything but better waits (`not_yet`); otherwise promote (`promoted`, its
    {how} filled with better or not worse)."""
    if verdict == "worse":
        return Decision(ROLLBACK, worse)
    if gate.champion_rule == "better" and verdict != "better":
        return wait(not_yet)
    return Decision(PROMOTE, promoted.format(how="better" if verdict == "better" else "not worse"))


def p99(frame: pd.DataFrame) -> float | None:
    """p99 of the scoring latency of the texts the version answered (a request's latency counts once per text it
    carried). Scorings aside run at the lowest priority, after the answer: their time is not what a client waits,
    so a shadow's latency is not judged, and a canary's is judged on its share."""
    from monitoring.prediction_log import ANSWER

    answers = frame[frame["role"] == ANSWER] if not frame.empty else frame
    latencies = pd.to_numeric(answers["latency_ms"], errors="coerce").dropna() if not answers.empty else []
    return float(np.percentile(latencies, 99)) if len(latencies) else None


def feedback_tables(cfg, skipped) -> list[tuple[str, pd.DataFrame]]:
    """(uri, table) of each file of data.feedback_path; a file that cannot be read is skipped and counted, and no
    feedback at all is no error (nobody has given any yet)."""
    import tempfile

    from components.data.table_readers import DataError, feedback_files, format_of, read_source, table_format

    try:
        files = feedback_files(cfg.data.feedback_path)
    except DataError as err:
        log.warning("no feedback for the rollout's decision: %s", err)
        files = []
    tables = []
    with tempfile.TemporaryDirectory(prefix="lifecycle-feedback-") as scratch:
        for i, uri in enumerate(files):
            try:
                tables.append(
                    (uri, read_source(uri, format_of(uri, table_format(cfg.data)), Path(scratch) / str(i), skipped))
                )
            except DataError as err:
                skipped.object(uri, str(err))
    return tables
