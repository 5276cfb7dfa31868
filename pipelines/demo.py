"""`lifecycle demo-drift`: the monitoring loop end to end, in its own work directory.

1. A champion to watch (trained by `lifecycle run`'s pipeline when the demo's registry has none).
2. In-distribution traffic (held-out texts of the champion's val and test splits, the training mix) is replayed
   through the served model into a prediction log; the monitor pipeline finds no drift and retrains nothing.
3. Shifted traffic (texts of the source data that no split holds, all of the first class: the class mix moves
   from balanced to one-sided) is replayed; the monitor finds drift, raises an alert and retrains on the data
   plus those texts as labelled feedback; the gate decides whether the new version goes on trial beside the
   champion (deploy.rollout: a shadow rollout by default, which served traffic and its labels then decide).
4. The same shifted window again, inside the cool-down: an alert, and no second retraining.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from components.config import LifecycleConfig

WINDOW = 200  # texts per replayed window
log = logging.getLogger(__name__)


def demo_drift(cfg: LifecycleConfig) -> None:
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
    from components.handoff import model_uri
    from components.pii import LogPii
    from components.registry import CHAMPION, resolve_bundle
    from components.storage import list_files
    from monitoring.prediction_log import PredictionLog

    bundle, name, version = resolve_bundle(
        model_uri(cfg.tracking.registered_model, CHAMPION), Path(cfg.work_dir) / "serving"
    )
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


def _say(line: str) -> None:
    log.info("\n=== %s", line)
