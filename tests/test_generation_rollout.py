"""A generator's canary: the evidence (responses per version, ratings and corrections joined by response id,
failures, p99 latency) from a prediction log and feedback, and the decision each way: promote, rollback, wait and
the deadline."""

import datetime as dt

import pandas as pd
import pytest

from components.config import GateConfig, RolloutConfig

STARTED = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
ROLLOUT = RolloutConfig(mode="canary", min_texts=100, min_labelled=50, deadline_hours=24)


def traffic(
    champion_ratings: list[float],
    candidate_ratings: list[float],
    candidate_failed: int = 0,
    candidate_ms: float = 100.0,
    unrated: int = 0,
):
    """A log of each version's answered responses, and their feedback: one rating per response in the lists, a
    candidate response with rating 1 also corrected; `unrated` more candidate responses without feedback."""
    rows, feedback = [], []
    for version, ratings, ms in (("1", champion_ratings, 100.0), ("2", candidate_ratings, candidate_ms)):
        for i, rating in enumerate(ratings):
            rows.append(record(version, f"{version}-{i}", ms))
            feedback.append({"response_id": f"{version}-{i}", "rating": rating, "corrected_response": None})
            if version == "2" and rating == 1:
                feedback[-1]["corrected_response"] = "a better answer"
    rows += [record("2", f"2-unrated-{i}", candidate_ms) for i in range(unrated)]
    rows += [record("2", f"2-failed-{i}", candidate_ms, error="the generator failed") for i in range(candidate_failed)]
    rows.append(record("2", "before", 1.0) | {"timestamp": STARTED - dt.timedelta(hours=1)})  # before the rollout
    return pd.DataFrame(rows), pd.DataFrame(feedback)


def record(version: str, response_id: str, ms: float, error: str | None = None) -> dict:
    return {
        "timestamp": STARTED + dt.timedelta(minutes=5),
        "model_version": version,
        "text": "a prompt",
        "role": "answer",
        "latency_ms": ms,
        "error": error,
        "response": None if error else "a response",
        "response_id": response_id,
        "finish_reason": "stop",
    }


def decide(predictions, feedback, hours: float = 1, gate: GateConfig | None = None, rollout=ROLLOUT):
    from monitoring.generation_rollout import decide_generation_rollout, gather_generation_evidence

    evidence = gather_generation_evidence(predictions, feedback, "1", "2", "canary", STARTED)
    return evidence, decide_generation_rollout(
        evidence, rollout, gate or GateConfig(), STARTED + dt.timedelta(hours=hours)
    )


GOOD = [5, 4, 5, 4, 3] * 20  # 100 ratings, mean 4.2
BAD = [2, 1, 2, 3, 1] * 20  # mean 1.8; a fifth of them (the 1s) corrected twice over


def test_the_counts_join_feedback_by_response_id_per_version():
    evidence, _ = decide(*traffic(GOOD, BAD[:60], candidate_failed=2, unrated=40))
    assert (evidence.champion_responses, evidence.candidate_responses) == (100, 102)  # the one before left out
    assert (evidence.champion_failed, evidence.candidate_failed) == (0, 2)
    assert (evidence.champion_rated, evidence.candidate_rated) == (100, 60)
    assert evidence.champion_mean_rating == pytest.approx(4.2) and evidence.candidate_mean_rating == pytest.approx(1.8)
    assert (evidence.champion_corrected, evidence.candidate_corrected) == (0, 24)
    assert evidence.candidate_ahead < 0.1 and evidence.p_value < 1e-10
    assert evidence.metrics()["candidate_failure_rate"] == pytest.approx(2 / 102)
    assert "rated champion 100 (mean 4.2, 0 corrected), candidate 60 (mean 1.8, 24 corrected)" in evidence.counts()


@pytest.mark.parametrize(
    "traffic_args, hours, expected, reason",
    [
        ((GOOD, GOOD[::-1]), 1, "promote", "rated not worse than champion version 1's"),
        ((GOOD, BAD), 1, "rollback", "rated worse than champion version 1's at level 0.05"),
        ((GOOD, GOOD, 30), 1, "rollback", "failed on 30 of 130 requests"),
        ((GOOD, GOOD, 0, 500.0), 1, "rollback", "p99 latency 500.0 ms is over 2x the champion's 100.0 ms"),
        ((GOOD, GOOD[:20], 0, 100.0, 90), 1, "wait", "20 rated responses of a version, of the 50 each needs"),
        ((GOOD, GOOD[:40]), 1, "wait", "40 candidate responses of the 100 needed"),
        ((GOOD, GOOD[:40]), 25, "rollback", "the deadline 2026-01-02 00:00 UTC passed and 40 candidate responses"),
    ],
    ids=["not-worse", "worse", "failures", "slower", "too-few-ratings", "too-few-responses", "deadline"],
)
def test_the_canary_promotes_rolls_back_or_waits_with_its_reason(traffic_args, hours, expected, reason):
    _, decision = decide(*traffic(*traffic_args), hours=hours)
    assert decision.value == expected and reason in decision.reason, decision.reason


def test_under_the_rule_better_an_equal_candidate_waits_and_a_better_one_is_promoted():
    better = GateConfig(champion_rule="better")
    assert decide(*traffic(GOOD, GOOD), gate=better)[1].value == "wait"
    _, decision = decide(*traffic(BAD, GOOD), gate=better)
    assert decision.value == "promote" and "rated better than" in decision.reason


def test_a_correction_without_a_rating_counts_as_the_lowest_rating():
    from monitoring.generation_rollout import response_scores

    feedback = pd.DataFrame(
        {"response_id": ["a", "b", "c"], "rating": [5, 2, None], "corrected_response": [None, None, "fixed"]}
    )
    scores = response_scores(feedback).set_index("response_id")
    assert scores["score"].to_dict() == {"a": 5, "b": 2, "c": 2} and scores["corrected"].tolist() == [
        False,
        False,
        True,
    ]


def test_check_rollout_decides_a_generators_canary_on_its_ratings(tmp_path, monkeypatch):
    """check_rollout dispatches on the task: the log and the feedback folder of a generator, its decision."""
    import mlflow

    from components.config import LifecycleConfig
    from monitoring import rollout

    cfg = LifecycleConfig(
        task="generation", work_dir=str(tmp_path), data={"path": "x.jsonl"}, deploy={"rollout": {"min_texts": 100}}
    )
    predictions, feedback = traffic(GOOD, BAD)
    monkeypatch.setattr(
        "components.registry.alias_version", lambda client, name, alias: "2" if alias == "candidate" else "1"
    )
    monkeypatch.setattr("components.registry.rollout_settings", lambda version: ("canary", 10.0, STARTED))
    monkeypatch.setattr(mlflow.MlflowClient, "get_model_version", lambda self, name, version: None)
    monkeypatch.setattr("monitoring.prediction_log.read_window", lambda *args: predictions)
    monkeypatch.setattr("monitoring.generation_rollout.response_feedback", lambda cfg, skipped: feedback)
    check = rollout.check_rollout(cfg, now=STARTED + dt.timedelta(hours=1), record=False)
    assert check.decision.value == "rollback" and "rated worse" in check.decision.reason, check.decision.reason
    report = check.report(cfg.tracking.registered_model, decided=False)
    assert "answered      champion 100 (0 failed, p99 100.0 ms); candidate 100" in report
