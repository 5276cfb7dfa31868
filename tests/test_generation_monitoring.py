"""Stage 7 for task=generation: the prediction log's generation records (in the log's privacy form), drift of the
prompts and responses found on shifted prompts and not on in-distribution ones (the instruction data), feedback
joined by response id, and a retraining's examples from the corrected responses."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import LifecycleConfig, MonitorConfig

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
INSTRUCTIONS = SHARED / "instructions" / "instruction-data.json"
SMS = SHARED / "sms_spam" / "SMSSpamCollection"


def instruction_log(rows: pd.DataFrame) -> pd.DataFrame:
    """The examples as the log holds a generator's traffic: the user's turn, the response, how it finished."""
    prompts = rows["instruction"] + np.where(rows["input"].eq(""), "", "\n\n" + rows["input"])
    return pd.DataFrame({"text": prompts, "response": rows["output"], "finish_reason": "stop"}).reset_index(drop=True)


@pytest.fixture(scope="module")
def instructions() -> pd.DataFrame:
    if not INSTRUCTIONS.is_file():
        pytest.skip(f"{INSTRUCTIONS} is not here")
    return pd.DataFrame(json.loads(INSTRUCTIONS.read_text())).sample(frac=1, random_state=0).reset_index(drop=True)


@pytest.mark.slow  # two Evidently checks of 500 against 200 prompts: about a minute, more on a busy machine
def test_drift_is_found_on_shifted_prompts_and_not_on_in_distribution_ones(instructions):
    from monitoring.generation_drift import check_generation_drift, profile_generations

    if not SMS.is_file():
        pytest.skip(f"{SMS} is not here")
    cfg = MonitorConfig()
    reference = profile_generations(instruction_log(instructions.iloc[:500]))
    held_out = instruction_log(instructions.iloc[500:700])
    calm, _ = check_generation_drift(reference, profile_generations(held_out), cfg)
    # Text messages asked of an instruction model; the responses stay the instruction data's, so only prompts move.
    sms = pd.read_csv(SMS, sep="\t", header=None, names=["label", "text"]).sample(200, random_state=0)
    shifted, snapshot = check_generation_drift(
        reference, profile_generations(held_out.assign(text=sms["text"].to_numpy())), cfg
    )
    assert not calm.drift_detected, calm.reason
    assert shifted.drift_detected and snapshot is not None, shifted.reason
    moved = {f.feature for f in shifted.drifted()}
    assert {"text", "embedding", "length"} <= moved and not moved & {"response_cut", "response_empty"}
    assert len(shifted.features) == 10 and {f.kind for f in shifted.features} == {
        "text descriptor",
        "text content",
        "prediction",
        "embedding",
    }


def test_response_features_measure_length_cuts_empties_refusals_and_non_letters():
    from monitoring.generation_drift import profile_generations

    frame = pd.DataFrame(
        {
            "text": ["a", "b", "c", "d"],
            "response": ["Paris.", "I can\u2019t help with that.", None, "1, 2, 3"],
            "finish_reason": ["stop", "stop", "stop", "length"],
        }
    )
    profile = profile_generations(frame)
    assert profile["response_length"].tolist() == [6, 23, 0, 7]
    assert profile["response_refusal"].tolist() == [0, 1, 0, 0]
    assert profile["response_empty"].tolist() == [0, 0, 1, 0]
    assert profile["response_cut"].tolist() == [0, 0, 0, 1]
    assert profile["response_non_letter_share"].iloc[3] == pytest.approx(100 * 5 / 7)
    assert profile["embedding"].iloc[0].shape == (384,)
    assert list(profile_generations(frame[["text"]]).columns) == ["text", "embedding"]  # prompts alone


def generation_cfg(tmp_path, model: dict | None = None, **data) -> LifecycleConfig:
    return LifecycleConfig(
        task="generation",
        work_dir=str(tmp_path / "work"),
        data={"path": str(tmp_path / "examples.jsonl"), **data},
        serve={"log_pii": "redact"},
        **({"model": model} if model else {}),
    )


def log_generations(cfg: LifecycleConfig, rows: list[tuple], version: str = "1") -> None:
    """rows: (response id, prompt, response or None, finish reason)."""
    from components.pii import LogPii
    from monitoring.prediction_log import PredictionLog

    log = PredictionLog(cfg.predictions_uri(), text_form=LogPii.of(cfg).text_form())
    for response_id, prompt, response, finish in rows:
        log.write_generation(
            prompt,
            response,
            "text-generator",
            version,
            response_id=response_id,
            prompt_tokens=len(prompt.split()),
            completion_tokens=len((response or "").split()),
            finish_reason=finish,
            latency_ms=120.5,
            ttft_ms=15.25 if response else None,
            error=None if response else "the generator failed",
        )
    log.close()


def test_generation_records_round_trip_in_the_logs_privacy_form(tmp_path):
    from components.skipped_records import SkippedRecords
    from monitoring import core
    from monitoring.prediction_log import GENERATION_COLUMNS, read_predictions

    cfg = generation_cfg(tmp_path)
    log_generations(
        cfg,
        [
            ("r1", "Write to jane.doe@example.com", "Done: mail jane.doe@example.com.", "stop"),
            ("r2", "Count to 3", None, "error"),
        ],
    )
    frame = read_predictions(cfg.predictions_uri())
    assert set(GENERATION_COLUMNS) <= set(frame.columns)
    first, failed = frame.iloc[0], frame.iloc[1]
    assert first["text"] == "Write to <EMAIL_ADDRESS>" and first["response"] == "Done: mail <EMAIL_ADDRESS>."
    assert (first["response_id"], first["prompt_tokens"], first["completion_tokens"]) == ("r1", 3, 3)
    assert (first["finish_reason"], first["latency_ms"], first["ttft_ms"]) == ("stop", 120.5, 15.25)
    assert pd.isna(failed["response"]) and failed["error"] == "the generator failed" and pd.isna(failed["ttft_ms"])
    current, source = core.current_texts(cfg, None, SkippedRecords())  # stage 7 reads what clients received
    assert list(current.columns) == ["text", "response", "finish_reason"] and len(current) == 1
    assert "prediction log" in source


def test_a_classifiers_log_keeps_its_columns(tmp_path):
    from monitoring.prediction_log import COLUMNS, PredictionLog, read_predictions

    log = PredictionLog(str(tmp_path))
    log.write(["hello"], ["ham"], [{"ham": 0.9, "spam": 0.1}], "clf", "1")
    log.close()
    assert list(read_predictions(str(tmp_path)).columns) == COLUMNS


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_feedback_joins_responses_by_id_and_damaged_records_are_counted(tmp_path):
    from components.skipped_records import SkippedRecords
    from monitoring.generation_rollout import corrected_examples, response_feedback, response_scores
    from monitoring.prediction_log import read_predictions

    feedback = tmp_path / "feedback"
    cfg = generation_cfg(tmp_path, feedback_path=str(feedback))
    log_generations(cfg, [("r1", "Name a colour", "Blue", "stop"), ("r2", "Name a fruit", "Carrot", "stop")])
    write_jsonl(
        feedback / "ratings.jsonl",
        [
            {"response_id": "r1", "rating": 5},
            {"response_id": "r2", "rating": 1, "corrected_response": "Apple"},
            {"response_id": "r2", "corrected_response": "Pear"},  # the latest correction counts
            {"response_id": "r9", "rating": "great"},  # not a number: skipped and counted
            {"response_id": "r3"},  # neither a rating nor a correction
        ],
    )
    skipped = SkippedRecords()
    table = response_feedback(cfg, skipped)
    assert table["response_id"].tolist() == ["r1", "r2", "r2"] and skipped.records == 2
    scores = response_scores(table).set_index("response_id")
    assert scores.loc["r1", "score"] == 5 and scores.loc["r2", "score"] == 1 and scores.loc["r2", "corrected"]
    examples = corrected_examples(read_predictions(cfg.predictions_uri()), table)
    assert examples.to_dict("records") == [{"prompt": "Name a fruit", "completion": "Pear"}]


def test_a_retraining_trains_on_the_data_plus_the_corrected_responses(tmp_path, tiny_gpt2):
    from components.skipped_records import SkippedRecords
    from components.tasks import task_of
    from monitoring.generation_rollout import CORRECTED, write_corrected_examples

    rows = [{"instruction": f"Say the number {i}.", "input": "", "output": f"{i}"} for i in range(40)]
    write_jsonl(tmp_path / "examples.jsonl", rows)
    feedback = tmp_path / "feedback"
    write_jsonl(feedback / "ratings.jsonl", [{"response_id": "r1", "rating": 0, "corrected_response": "Forty-one."}])
    cfg = generation_cfg(tmp_path, {"base": str(tiny_gpt2), "max_length": 200}, feedback_path=str(feedback), pii="off")
    log_generations(cfg, [("r1", "Say the number 41.", "41", "stop")])
    assert "1 corrected responses written" in write_corrected_examples(cfg, SkippedRecords())
    assert json.loads((feedback / CORRECTED).read_text()) == {
        "prompt": "Say the number 41.",
        "completion": "Forty-one.",
    }
    manifest = task_of("generation").prepare_data(cfg, tmp_path / "data")  # the ratings file itself is no example
    assert sum(c["examples"] for c in manifest.counts.values()) == 41
    train = pd.read_parquet(tmp_path / "data" / "train.parquet")
    assert train.loc[train["source"] == "feedback", "response"].tolist() == ["Forty-one."]


@pytest.mark.slow  # an Evidently check: half a minute or more
def test_a_training_runs_check_compares_the_test_prompts_alone_with_the_reference(instructions, tmp_path):
    """Stage 7 of a generator's training run: the test split has no served responses, so its prompts alone are
    compared (5 features), and held-out prompts do not drift."""
    from components.handoff import DEPLOYMENT, REFERENCE, write_json
    from monitoring import core
    from monitoring.generation_drift import profile_generations

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    profile_generations(instruction_log(instructions.iloc[:500])).to_parquet(bundle / REFERENCE, index=False)
    write_json(bundle, DEPLOYMENT, {"reference_pii": "redact"})
    cfg = generation_cfg(tmp_path)
    test = pd.DataFrame({"text": core.in_log_form(cfg, instruction_log(instructions.iloc[500:700])["text"].tolist())})
    result = core.monitor(bundle, test, cfg, tmp_path / "drift")
    assert not result.drift_detected and len(result.features) == 5, result.reason
    assert (tmp_path / "drift" / "drift_summary.json").is_file()
