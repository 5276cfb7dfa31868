"""A rollout's evidence and its decision, as plain functions, and the decision carried out and recorded.

The evidence comes from the prediction log since the rollout began: the texts both versions scored (in shadow
every request, in a canary the candidate's share, which the champion scores aside), how often they agree, and on
the texts that later received a label in the feedback, who was right: the exact McNemar test of stage 5's gate on
those pairs. Each version's failed scorings and the p99 latency of its answers come from the same records. A
generator's canary is decided on its responses' ratings instead (monitoring/generation_rollout.py).

`check_rollout` runs in the monitor pipeline on each scheduled check and in `lifecycle rollout`: each decision is an
MLflow run with the evidence, promote and rollback are carried out in the registry (the servers follow), and a
rollback is raised as an alert.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from components.decision import Decision
from components.statistics import PairedComparison, compare_paired, paired_verdict
from monitoring.rollout_rules import (
    PROMOTE,
    ROLLBACK,
    failure_rollback,
    feedback_tables,
    latency_rollback,
    latency_text,
    p99,
    verdict_decision,
    wait_or_deadline,
)

if TYPE_CHECKING:
    from components.config import LifecycleConfig

ROLLOUT_STAGE = "rollout"  # the lifecycle.stage tag of a decision's run
log = logging.getLogger(__name__)


@dataclass
class RolloutEvidence:
    champion: str
    candidate: str
    mode: str
    started: dt.datetime
    paired: int  # texts scored by both versions
    agreement: float  # the share of those given the same label
    labelled: int  # paired texts with a label in the feedback
    champion_accuracy: float
    candidate_accuracy: float
    candidate_only_right: int  # labelled texts the candidate got right and the champion wrong
    champion_only_right: int
    p_value: float  # exact McNemar on the labelled pairs
    champion_scored: int  # texts, including those that failed
    candidate_scored: int
    champion_failed: int
    candidate_failed: int
    champion_p99_ms: float | None  # of its answers
    candidate_p99_ms: float | None  # of its answers: a canary's; none in shadow

    @property
    def candidate_failure_rate(self) -> float:
        return self.candidate_failed / self.candidate_scored if self.candidate_scored else 0.0

    def metrics(self) -> dict[str, float]:
        figures = {k: float(v) for k, v in asdict(self).items() if isinstance(v, (int, float))}
        return figures | {"candidate_failure_rate": self.candidate_failure_rate}

    def lines(self) -> list[str]:
        """What each version scored and how they compare, as `lifecycle rollout` prints it."""
        return [
            f"  scored        champion {self.champion_scored} texts ({self.champion_failed} failed, p99 "
            f"{latency_text(self.champion_p99_ms)}); candidate {self.candidate_scored} ({self.candidate_failed} "
            f"failed, p99 {latency_text(self.candidate_p99_ms)})",
            f"  paired        {self.paired} texts, agreement {self.agreement:.1%}; {self.labelled} labelled: accuracy "
            f"champion {self.champion_accuracy:.4f}, candidate {self.candidate_accuracy:.4f}, exact McNemar p = "
            f"{self.p_value:.3g}",
        ]


def gather_evidence(
    predictions: pd.DataFrame, feedback: pd.DataFrame, champion: str, candidate: str, mode: str, started: dt.datetime
) -> RolloutEvidence:
    """`predictions`: the prediction log (read_predictions' columns); `feedback`: columns text and label."""
    rows = predictions[predictions["timestamp"] >= started] if not predictions.empty else predictions
    versions = rows["model_version"].astype(str) if not rows.empty else pd.Series(dtype=str)
    scored = {v: rows[versions == v] for v in (champion, candidate)}
    ok = {v: frame[frame["error"].isna()] for v, frame in scored.items()}
    # A text's latest label from each version; texts joined exactly (a hash join on the text).
    last = {v: frame.drop_duplicates("text", keep="last")[["text", "label"]] for v, frame in ok.items()}
    pairs = last[champion].merge(last[candidate], on="text", suffixes=("_champion", "_candidate"))
    truth = feedback.drop_duplicates("text", keep="last")[["text", "label"]].rename(columns={"label": "truth"})
    labelled = pairs.merge(truth, on="text")
    champion_right = (labelled["label_champion"] == labelled["truth"]).to_numpy(bool)
    candidate_right = (labelled["label_candidate"] == labelled["truth"]).to_numpy(bool)
    # Stage 5's paired test, on live texts; none without labels.
    test = (
        compare_paired(candidate_right, champion_right, champion)
        if len(labelled)
        else PairedComparison(champion, 0.0, 0, 0, 1.0)
    )
    return RolloutEvidence(
        champion,
        candidate,
        mode,
        started,
        len(pairs),
        float((pairs["label_champion"] == pairs["label_candidate"]).mean()) if len(pairs) else 0.0,
        len(labelled),
        test.champion_accuracy,
        float(candidate_right.mean()) if len(labelled) else 0.0,
        test.challenger_only_right,
        test.champion_only_right,
        test.p_value,
        len(scored[champion]),
        len(scored[candidate]),
        len(scored[champion]) - len(ok[champion]),
        len(scored[candidate]) - len(ok[candidate]),
        p99(ok[champion]),
        p99(ok[candidate]),
    )


def decide_rollout(evidence: RolloutEvidence, rollout, gate, now: dt.datetime) -> Decision[str]:
    """promote, rollback or wait, with the reason and the counts. `rollout`: a RolloutConfig; `gate`: the
    GateConfig whose champion_rule and significance stage 5 used. A candidate that fails more than
    max_error_rate of its scorings or is more than max_p99_ratio slower is rolled back; one significantly worse
    on the labelled pairs is rolled back; otherwise it is promoted once min_texts pairs, min_labelled of them
    labelled, are in (and, under the rule `better`, once it is significantly better). Until then it waits, and
    at the deadline too little evidence ends the rollout by rollout.on_deadline."""
    e = evidence
    counts = (
        f"{e.paired} texts scored by both, {e.labelled} of them labelled; candidate right alone on "
        f"{e.candidate_only_right}, the champion alone on {e.champion_only_right}; exact McNemar p = "
        f"{e.p_value:.3g}"
    )
    failing = failure_rollback(e.candidate, e.candidate_failed, e.candidate_scored, rollout)
    if failing:
        return failing

    def wait(why: str) -> Decision[str]:
        return wait_or_deadline(why, counts, e.started, rollout, now)

    if e.paired < rollout.min_texts:
        return wait(f"{e.paired} texts scored by both versions of the {rollout.min_texts} needed")
    slow = latency_rollback(e.candidate, e.candidate_p99_ms, e.champion_p99_ms, rollout)
    if slow:
        return slow
    if e.labelled < rollout.min_labelled:
        return wait(f"{e.labelled} labelled texts of the {rollout.min_labelled} needed")
    verdict = paired_verdict(e.candidate_only_right, e.champion_only_right, e.p_value, gate.significance)
    accuracy = f"accuracy {e.candidate_accuracy:.4f} vs {e.champion_accuracy:.4f}"
    return verdict_decision(
        verdict,
        gate,
        wait,
        f"version {e.candidate} is worse than champion version {e.champion} on live traffic: {accuracy} at "
        f"level {gate.significance:g} ({counts})",
        f"version {e.candidate} is not yet significantly better (rule better)",
        f"version {e.candidate} is {{how}} than champion version {e.champion} on live traffic: {accuracy}, "
        f"agreement {e.agreement:.1%} (rule {gate.champion_rule}; {counts})",
    )


@dataclass
class RolloutCheck:
    evidence: object  # a RolloutEvidence, or a generator's GenerationEvidence
    decision: Decision[str]
    run_id: str = ""  # the decision's MLflow run, when it was recorded
    alert: str = ""

    def report(self, model_name: str, decided: bool) -> str:
        """The evidence and the decision, as `lifecycle rollout` prints them: `decided`, it was carried out."""
        e = self.evidence
        return "\n".join(
            [
                f"{model_name}: version {e.candidate} in {e.mode} beside champion {e.champion}, since "
                f"{e.started:%Y-%m-%d %H:%M} UTC",
                *e.lines(),
                ("  done          " if decided else "  decision now  ")
                + f"{self.decision.value}: {self.decision.reason}",
                *([f"  MLflow run    {self.run_id}"] if self.run_id else []),
            ]
        )

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

    from components.registry import CANDIDATE, CHAMPION, alias_version, rollout_settings
    from components.skipped_records import SkippedRecords
    from monitoring.prediction_log import read_window

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
    if cfg.task == "generation":  # a canary decided on the ratings of the responses
        from monitoring.generation_rollout import decide_generation_rollout as decide
        from monitoring.generation_rollout import gather_generation_evidence as gather
        from monitoring.generation_rollout import response_feedback as feedback
    else:
        gather, decide, feedback = gather_evidence, decide_rollout, _feedback
    evidence = gather(predictions, feedback(cfg, skipped), champion, candidate, mode, started)
    decision = by_hand or decide(evidence, cfg.deploy.rollout, cfg.gate, now)
    check = RolloutCheck(evidence, decision)
    if record:
        _record(cfg, check, skipped)
    return check


def _record(cfg: LifecycleConfig, check: RolloutCheck, skipped) -> None:
    import mlflow

    from components.registry import end_rollout
    from components.tracking import STAGE_TAG, use_config_experiment

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
    from components.pii import LogPii

    frames = []
    for uri, frame in feedback_tables(cfg, skipped):
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
