"""`lifecycle demo-drift`: the monitoring loop end to end, in its own work directory.

1. A champion to watch (trained by `lifecycle run`'s pipeline when the demo's registry has none).
2. In-distribution traffic (held-out texts of the champion's val and test splits, the training mix) is replayed
   through the served model into a prediction log; the monitor pipeline finds no drift and retrains nothing.
3. Shifted traffic (texts of the source data that no split holds, all of the first class: the class mix moves
   from balanced to one-sided) is replayed; the monitor finds drift, raises an alert and retrains on the data
   plus those texts as labelled feedback; the gate decides whether the new version goes on trial beside the
   champion (deploy.rollout: a shadow rollout by default, which served traffic and its labels then decide).
4. The same shifted window again, inside the cool-down: an alert, and no second retraining.

For task=generation the same four steps, with prompts: the held-out prompts of the champion's val and test splits,
then text messages (the SMS Spam Collection, as configs/sms_spam.yaml fetches it) sent to the instruction model.
Each prompt is answered by the champion's onnxruntime-genai bundle as the server answers it (serve.max_tokens) and
logged as the server logs it. The messages have no corrected responses to give: the retraining trains on the data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from components.config import LifecycleConfig

WINDOW = 200  # texts per replayed window
SHIFTED_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sms_spam.yaml"  # a generator's shifted prompts
log = logging.getLogger(__name__)


def demo_drift(cfg: LifecycleConfig, shifted: str | None = None) -> None:
    """`shifted`: a generator's shifted prompts, a file in the SMS Spam Collection's format (else downloaded)."""
    import mlflow

    from components.data.table_readers import DataError
    from components.registry import CHAMPION, alias_version
    from pipelines.local import run_locally, tracking_uri_for

    work = Path(cfg.work_dir)
    mlflow.set_tracking_uri(tracking_uri_for(cfg))
    if alias_version(mlflow.MlflowClient(), cfg.tracking.registered_model, CHAMPION) is None:
        _say(f"1. No champion in {work} yet: running the training pipeline (stages 1-7) to make one")
        run_locally(cfg)
    else:
        _say(f"1. Watching the champion of {cfg.tracking.registered_model} in {work}")
    if cfg.task == "generation":
        return demo_generation_drift(cfg, shifted)
    splits = champion_splits(cfg)
    held_out = pd.concat([splits["val"], splits["test"]]).sample(WINDOW, random_state=cfg.seed, replace=False)
    normal = _replay(cfg, held_out["text"].tolist(), work / "demo-traffic" / "in-distribution")

    _say(f"2. In-distribution traffic: {WINDOW} held-out texts with the training mix -> {normal}")
    monitor_once_on(cfg, normal)

    unseen = unseen_rows(cfg, splits)
    first_label = sorted(unseen["label"].unique())[0]
    shifted_rows = unseen[unseen["label"] == first_label]
    if len(shifted_rows) < WINDOW:
        raise DataError(
            f"the demo needs {WINDOW} texts of one class that no split holds; the data has "
            f"{len(shifted_rows)} (use data with more texts than the balanced splits take)"
        )
    shifted_rows = shifted_rows.sample(WINDOW, random_state=cfg.seed)
    shifted = _replay(cfg, shifted_rows["text"].tolist(), work / "demo-traffic" / "shifted")
    feedback = work / "feedback" / "shifted.jsonl"
    feedback.parent.mkdir(parents=True, exist_ok=True)
    shifted_rows.rename(columns={"text": cfg.data.text_column, "label": cfg.data.label_column}).to_json(
        feedback, orient="records", lines=True, force_ascii=False
    )
    retrain_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"feedback_path": str(feedback.parent)})})

    _say(
        f"3. Shifted traffic: {WINDOW} unseen texts, all '{first_label}' -> {shifted}; their labels are the "
        f"feedback in {feedback}"
    )
    monitor_once_on(retrain_cfg, shifted)
    _say("4. The same shifted window again, inside the cool-down")
    monitor_once_on(retrain_cfg, shifted)
    _say(
        f"Done. Alerts in {work / 'alerts'}; `lifecycle ui --set work_dir={work}` shows the runs "
        f"(the retraining's parent run is tagged lifecycle.alert)."
    )


def demo_generation_drift(cfg: LifecycleConfig, shifted_path: str | None) -> None:
    """Steps 2-4 for a generator: held-out prompts, then text messages, answered by the champion and monitored."""
    from components.data.table_readers import read_table, resolve_sources, table_format

    work = Path(cfg.work_dir)
    splits = champion_splits(cfg)
    held_out = pd.concat([splits["val"], splits["test"]])
    held_out = held_out.sample(min(WINDOW, len(held_out)), random_state=cfg.seed)
    normal = _replay_generations(cfg, held_out["text"].tolist(), work / "demo-traffic" / "in-distribution")
    _say(f"2. In-distribution traffic: {len(held_out)} held-out prompts, answered by the champion -> {normal}")
    monitor_once_on(cfg, normal)

    from components.config.reading import load_config

    messages = load_config(SHIFTED_CONFIG).data
    if shifted_path:
        messages = messages.model_copy(update={"path": shifted_path})
    (source,) = resolve_sources(messages, work / "downloads").values()
    texts = read_table(source, table_format(messages))["text"].dropna().astype(str)
    shifted = _replay_generations(
        cfg, texts.sample(WINDOW, random_state=cfg.seed).tolist(), work / "demo-traffic" / "shifted"
    )
    _say(f"3. Shifted traffic: {WINDOW} text messages of {source} sent as prompts -> {shifted}")
    monitor_once_on(cfg, shifted)
    _say("4. The same shifted window again, inside the cool-down")
    monitor_once_on(cfg, shifted)
    _say(f"Done. Alerts in {work / 'alerts'}; `lifecycle ui --set work_dir={work}` shows the runs.")


def _replay_generations(cfg: LifecycleConfig, prompts: list[str], log_dir: Path) -> Path:
    """The server's path without HTTP: the champion's bundle answers each prompt (greedy, serve.max_tokens, as the
    drift reference was made), the prediction log records it as the server does."""
    import shutil
    import time
    import uuid

    from components.deploy.onnx_generator import OnnxGenerator, Sampling
    from components.pii import LogPii
    from components.storage import list_files
    from monitoring.prediction_log import PredictionLog

    bundle, name, version = _champion(cfg)
    generator = OnnxGenerator(bundle)
    try:
        began = time.perf_counter()
        done = generator.complete([[{"role": "user", "content": p}] for p in prompts], Sampling(cfg.serve.max_tokens))
        each_ms = 1000 * (time.perf_counter() - began) / len(prompts)  # answered together: the mean
    finally:
        generator.close()
    shutil.rmtree(log_dir, ignore_errors=True)
    log = PredictionLog(str(log_dir), flush_texts=len(prompts) + 1, text_form=LogPii.of(cfg).text_form())
    for prompt, answer in zip(prompts, done):
        log.write_generation(
            prompt,
            answer.text,
            name,
            version,
            response_id=f"demo-{uuid.uuid4().hex}",
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            finish_reason=answer.finish_reason,
            latency_ms=each_ms,
            ttft_ms=None,
        )
    log.close()
    (shard,) = list_files(str(log_dir))
    return Path(shard)


def monitor_once_on(cfg: LifecycleConfig, current: Path) -> None:
    from pipelines.watch import monitor_once

    monitor_once(cfg.model_copy(update={"monitor": cfg.monitor.model_copy(update={"current": str(current)})}))


def champion_splits(cfg: LifecycleConfig) -> dict[str, pd.DataFrame]:
    """The splits the champion was trained on: stage 1's output of the newest run that deployed it."""
    from components.handoff import SPLITS, read_split
    from components.stages import DATA, DEPLOY

    runs = sorted(
        (p for p in (Path(cfg.work_dir) / "kfp").glob(f"{cfg.name}-training-*") if (p / DEPLOY.task_name).is_dir()),
        key=lambda p: p.stat().st_mtime,
    )
    data_dir = runs[-1] / DATA.task_name / "dataset"
    return {name: read_split(data_dir, name) for name in SPLITS}


def unseen_rows(cfg: LifecycleConfig, splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    from components.data.splitting import clean
    from components.data.table_readers import read_table, resolve_sources, table_format

    sources = resolve_sources(cfg.data.model_copy(update={"feedback_path": None}), Path(cfg.work_dir) / "downloads")
    rows = pd.concat(
        [
            clean(read_table(path, table_format(cfg.data)), cfg.data.text_column, cfg.data.label_column)
            for path in sources.values()
        ]
    )
    used = set(pd.concat(splits.values())["text"])
    return rows[~rows["text"].isin(used)]


def _replay(cfg: LifecycleConfig, texts: list[str], log_dir: Path) -> Path:
    """The server's path without HTTP: the champion's ONNX bundle classifies, the prediction log records."""
    import shutil

    from components.deploy.onnx_classifier import OnnxClassifier, label_probabilities
    from components.pii import LogPii
    from components.storage import list_files
    from monitoring.prediction_log import PredictionLog

    bundle, name, version = _champion(cfg)
    classifier = OnnxClassifier(bundle)
    probabilities = classifier.probabilities(texts)
    shutil.rmtree(log_dir, ignore_errors=True)
    log = PredictionLog(str(log_dir), flush_texts=len(texts), text_form=LogPii.of(cfg).text_form())
    log.write(
        texts,
        [classifier.labels[i] for i in probabilities.argmax(1)],
        label_probabilities(classifier.labels, probabilities),
        name,
        version,
    )
    log.close()
    (shard,) = list_files(str(log_dir))
    return Path(shard)


def _champion(cfg: LifecycleConfig):
    """(the champion's bundle folder, registered name, version), downloaded into the work dir."""
    from components.handoff import model_uri
    from components.registry import CHAMPION, resolve_bundle

    return resolve_bundle(model_uri(cfg.tracking.registered_model, CHAMPION), Path(cfg.work_dir) / "serving")


def _say(line: str) -> None:
    log.info("\n=== %s", line)
