"""A generator's live evidence: the feedback on its responses (a rating, or a corrected response) joined with the
prediction log by response id. It decides a canary rollout (as plain functions, like a classifier's in
monitoring/rollout.py) and gives a retraining its corrected responses as examples.

Feedback records: `response_id` (the id the server returned), `rating` (a number, higher is better: 1-5 stars,
1/0 thumbs) and/or `corrected_response` (what the response should have been). A correction without a rating counts
as the lowest rating in the feedback: the user rewrote the response, so it was not good.

The decision: the candidate is compared with the champion on the ratings of the responses each gave (two-sided
Mann-Whitney U at gate.significance: ratings are ordinal and the two versions answer different requests, so
nothing is paired); it is rolled back when significantly worse, promoted when not (or, under the rule `better`,
when significantly better), once min_texts candidate responses and min_labelled rated responses of each version are
in. Failures, latency and the deadline are judged as for a classifier (monitoring/rollout_rules.py)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

import pandas as pd

from components.decision import Decision
from components.statistics import paired_verdict
from monitoring.rollout_rules import (
    failure_rollback,
    feedback_tables,
    latency_rollback,
    latency_text,
    p99,
    verdict_decision,
    wait_or_deadline,
)

FEEDBACK_COLUMNS = ["response_id", "rating", "corrected_response"]
CORRECTED = "corrected-responses.jsonl"  # the retraining's examples, written into data.feedback_path


@dataclass
class GenerationEvidence:
    champion: str
    candidate: str
    mode: str
    started: dt.datetime
    champion_responses: int  # answered requests, including those that failed
    candidate_responses: int
    champion_failed: int
    candidate_failed: int
    champion_rated: int  # responses with a rating or a correction in the feedback
    candidate_rated: int
    champion_mean_rating: float
    candidate_mean_rating: float
    champion_corrected: int
    candidate_corrected: int
    candidate_ahead: float  # P(a candidate rating > a champion rating), ties half: 0.5 is no difference
    p_value: float  # two-sided Mann-Whitney U on the two versions' ratings
    champion_p99_ms: float | None
    candidate_p99_ms: float | None

    @property
    def candidate_failure_rate(self) -> float:
        return self.candidate_failed / self.candidate_responses if self.candidate_responses else 0.0

    def metrics(self) -> dict[str, float]:
        figures = {k: float(v) for k, v in asdict(self).items() if isinstance(v, (int, float))}
        return figures | {"candidate_failure_rate": self.candidate_failure_rate}

    def counts(self) -> str:
        return (
            f"{self.candidate_responses} candidate responses; rated champion {self.champion_rated} "
            f"(mean {self.champion_mean_rating:.3g}, {self.champion_corrected} corrected), candidate "
            f"{self.candidate_rated} (mean {self.candidate_mean_rating:.3g}, {self.candidate_corrected} corrected); "
            f"Mann-Whitney p = {self.p_value:.3g}"
        )

    def lines(self) -> list[str]:
        """What each version answered and how it was rated, as `lifecycle rollout` prints it."""
        return [
            f"  answered      champion {self.champion_responses} ({self.champion_failed} failed, p99 "
            f"{latency_text(self.champion_p99_ms)}); candidate {self.candidate_responses} "
            f"({self.candidate_failed} failed, p99 {latency_text(self.candidate_p99_ms)})",
            f"  rated         {self.counts()}",
        ]


def response_scores(feedback: pd.DataFrame) -> pd.DataFrame:
    """response_id, score and corrected (bool) of each response with feedback (its latest record): the rating, or
    for a correction without one the lowest rating given."""
    latest = feedback.drop_duplicates("response_id", keep="last")
    corrected = latest["corrected_response"].notna()
    ratings = latest["rating"]
    floor = float(feedback["rating"].min()) if feedback["rating"].notna().any() else 0.0
    scored = latest.assign(score=ratings.where(ratings.notna(), floor), corrected=corrected)
    return scored[ratings.notna() | corrected][["response_id", "score", "corrected"]]


def gather_generation_evidence(
    predictions: pd.DataFrame, feedback: pd.DataFrame, champion: str, candidate: str, mode: str, started: dt.datetime
) -> GenerationEvidence:
    """`predictions`: the prediction log (read_predictions' columns); `feedback`: FEEDBACK_COLUMNS."""
    from scipy.stats import mannwhitneyu

    from monitoring.prediction_log import ANSWER

    if "response_id" not in predictions.columns:  # a log with no generation in it yet
        predictions = predictions.assign(response_id=None)
    rows = predictions[(predictions["timestamp"] >= started) & predictions["role"].eq(ANSWER)]
    versions = rows["model_version"].astype(str)
    answered = {v: rows[versions == v] for v in (champion, candidate)}
    ok = {v: frame[frame["error"].isna()] for v, frame in answered.items()}
    scores = response_scores(feedback)
    rated = {v: frame[["response_id"]].merge(scores, on="response_id") for v, frame in ok.items()}
    old, new = rated[champion]["score"].to_numpy(float), rated[candidate]["score"].to_numpy(float)
    if len(old) and len(new):
        test = mannwhitneyu(new, old, alternative="two-sided")
        ahead, p_value = float(test.statistic) / (len(new) * len(old)), float(test.pvalue)
    else:
        ahead, p_value = 0.5, 1.0
    return GenerationEvidence(
        champion,
        candidate,
        mode,
        started,
        *(len(answered[v]) for v in (champion, candidate)),
        *(len(answered[v]) - len(ok[v]) for v in (champion, candidate)),
        len(old),
        len(new),
        float(old.mean()) if len(old) else 0.0,
        float(new.mean()) if len(new) else 0.0,
        *(int(rated[v]["corrected"].sum()) for v in (champion, candidate)),
        ahead,
        1.0 if p_value != p_value else p_value,  # NaN: every rating equal, no difference
        p99(ok[champion]),
        p99(ok[candidate]),
    )


def decide_generation_rollout(evidence: GenerationEvidence, rollout, gate, now: dt.datetime) -> Decision[str]:
    """promote, rollback or wait, with the reason and the counts (the module's docstring has the rules)."""
    e = evidence
    failing = failure_rollback(e.candidate, e.candidate_failed, e.candidate_responses, rollout, "requests")
    if failing:
        return failing

    def wait(why: str) -> Decision[str]:
        return wait_or_deadline(why, e.counts(), e.started, rollout, now)

    if e.candidate_responses < rollout.min_texts:
        return wait(f"{e.candidate_responses} candidate responses of the {rollout.min_texts} needed")
    slow = latency_rollback(e.candidate, e.candidate_p99_ms, e.champion_p99_ms, rollout)
    if slow:
        return slow
    if min(e.champion_rated, e.candidate_rated) < rollout.min_labelled:
        fewer = min(e.champion_rated, e.candidate_rated)
        return wait(f"{fewer} rated responses of a version, of the {rollout.min_labelled} each needs")
    # stage 5's rule (significant, and which way): the shares of the rating comparisons each version wins
    verdict = paired_verdict(e.candidate_ahead, 1 - e.candidate_ahead, e.p_value, gate.significance)
    return verdict_decision(
        verdict,
        gate,
        wait,
        f"version {e.candidate}'s responses are rated worse than champion version {e.champion}'s at level "
        f"{gate.significance:g} ({e.counts()})",
        f"version {e.candidate} is not yet rated significantly better (rule better)",
        f"version {e.candidate}'s responses are rated {{how}} than champion version {e.champion}'s (rule "
        f"{gate.champion_rule}; {e.counts()})",
    )


def response_feedback(cfg, skipped) -> pd.DataFrame:
    """The feedback on responses in data.feedback_path's files, as FEEDBACK_COLUMNS (ratings as numbers). A file
    without response_id and a rating or corrected_response, and a record whose rating is not a number or that has
    neither, are skipped and counted; the retraining's own examples (CORRECTED) are no feedback."""
    frames = []
    for uri, frame in feedback_tables(cfg, skipped):
        if uri.rsplit("/", 1)[-1] == CORRECTED:
            continue
        if "response_id" not in frame.columns or not {"rating", "corrected_response"} & set(frame.columns):
            skipped.object(uri, f"no response_id with a rating or corrected_response; found {list(frame.columns)}")
            continue
        frame = frame.reindex(columns=FEEDBACK_COLUMNS)
        rating = pd.to_numeric(frame["rating"], errors="coerce")
        corrected = frame["corrected_response"].map(lambda r: isinstance(r, str) and bool(r.strip())).astype(bool)
        bad = (frame["rating"].notna() & rating.isna()) | (rating.isna() & ~corrected) | frame["response_id"].isna()
        for row in frame.index[bad]:
            skipped.record(uri, row, "no response_id, or neither a numeric rating nor a corrected_response")
        frames.append(
            frame.assign(rating=rating, corrected_response=frame["corrected_response"].where(corrected))[~bad]
        )
    if not frames:
        return pd.DataFrame(columns=FEEDBACK_COLUMNS)
    feedback = pd.concat(frames, ignore_index=True)
    return feedback.assign(response_id=feedback["response_id"].astype(str))


def corrected_examples(predictions: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """prompt and completion (the prompt_completion format stage 1 reads) of each corrected response: its prompt
    from the log, in the log's form, joined by response id; the latest correction of a response counts."""
    corrected = feedback.dropna(subset=["corrected_response"]).drop_duplicates("response_id", keep="last")
    logged = predictions.dropna(subset=["response_id"]).astype({"response_id": str})
    prompts = logged.drop_duplicates("response_id", keep="last")[["response_id", "text"]]
    joined = corrected.merge(prompts, on="response_id")
    return pd.DataFrame({"prompt": joined["text"], "completion": joined["corrected_response"]})


def write_corrected_examples(cfg, skipped) -> str:
    """The feedback's corrected responses as examples in data.feedback_path/CORRECTED, where the retraining's
    stage 1 reads them beside the data (it passes over the feedback records themselves); returns what was done."""
    from components.storage import is_folder, join, write_bytes
    from monitoring.prediction_log import read_predictions

    folder = cfg.data.feedback_path
    if cfg.serve.log_pii == "hash":  # the log's prompts are keyed hashes: no text to train on
        return "no corrected responses written: serve.log_pii=hash keeps no prompt text to train on"
    if not folder or not is_folder(folder):
        return f"no corrected responses written: data.feedback_path ({folder}) is not a folder"
    if "response_id" not in (log := read_predictions(cfg.predictions_uri(), skipped=skipped)).columns:
        return "no corrected responses written: the prediction log holds no generations"
    examples = corrected_examples(log, response_feedback(cfg, skipped))
    if examples.empty:
        return "no corrected response in the feedback joins a logged generation"
    write_bytes(join(folder, CORRECTED), examples.to_json(orient="records", lines=True, force_ascii=False).encode())
    return f"{len(examples)} corrected responses written to {join(folder, CORRECTED)} for the retraining"
