"""One drift check, as plain functions: which texts to check, and the check of those texts against the served
model's reference. MLflow, alerts and retraining are added by the adapter (components/monitor/adapter.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from components.config import LifecycleConfig
from components.data.table_readers import DataError
from components.handoff import REFERENCE, read_deployment
from components.skipped_records import SkippedRecords
from monitoring.drift import DriftResult, check_drift, profile_texts, write_report


def current_texts(cfg: LifecycleConfig, current_path: str | None, skipped: SkippedRecords) -> tuple[list[str], str]:
    """(texts in the prediction log's form, where they came from): the file named (here or in monitor.current),
    else the prediction log's last monitor.window_hours. Either may be a storage URI. Damaged records, and rows
    without a text, are skipped and counted in `skipped`; an empty window is no error, a window of nothing but
    damaged input is."""
    path = current_path or cfg.monitor.current
    if path:  # put in the prediction log's form, which the reference is in (a log's texts are already)
        texts, source = in_log_form(cfg, _file_texts(cfg, path, skipped)), str(path)
    else:
        from monitoring.prediction_log import answered, read_window

        log = cfg.predictions_uri()  # what clients received: a rollout's shadow scores would count texts twice
        texts = answered(read_window(log, cfg.monitor.window_hours, skipped=skipped))["text"].tolist()
        source = f"prediction log {log}, last {cfg.monitor.window_hours:g} h"
    if not texts and skipped.examples:
        raise DataError(f"{source}: nothing usable: {skipped.summary()}, e.g. {skipped.examples[0]}")
    return texts, source


def _file_texts(cfg: LifecycleConfig, path: str, skipped: SkippedRecords) -> list[str]:
    """A prediction log file or any JSONL/Parquet file is read as such; other files in the training data's format."""
    import tempfile

    from components.data.table_readers import format_of, read_source, table_format

    data = cfg.data
    with tempfile.TemporaryDirectory(prefix="lifecycle-current-") as scratch:
        frame = read_source(path, format_of(path, table_format(data)), scratch, skipped)
    from monitoring.prediction_log import answered

    frame = answered(frame)  # a prediction log's file: what clients received, not a rollout's shadow scores
    if frame.empty:
        return []
    candidates = list(dict.fromkeys((data.text_column, "text")))  # the training data's column, or the log's
    column = next((c for c in candidates if c in frame.columns), None)
    if column is None:
        expected = " or ".join(map(repr, candidates))
        raise DataError(f"{path}: no text column; expected {expected}, found {list(frame.columns)}")
    texts = frame[column]
    usable = texts.map(lambda t: isinstance(t, str) and bool(t.strip())).astype(bool)
    for row in texts.index[~usable]:
        skipped.record(path, row, "no text")
    return texts[usable].tolist()


def in_log_form(cfg: LifecycleConfig, texts: list[str]) -> list[str]:
    """Texts as the prediction log stores them (serve.log_pii), as drift is measured on them."""
    from components.pii import LogPii

    return LogPii.of(cfg).drift_form()(texts)


def monitor(bundle_dir: str | Path, texts: list[str], cfg: LifecycleConfig, out_dir: str | Path) -> DriftResult:
    """Profile `texts` (in the prediction log's form) with the bundle's model, compare them with the bundle's
    reference, write the report. A reference in another form than the log's is refused: the verdict would measure
    the difference of the forms, and could start a retraining for it."""
    from components.deploy.onnx_classifier import OnnxClassifier

    reference_file = Path(bundle_dir) / REFERENCE
    if not reference_file.is_file():
        raise DataError(
            f"{bundle_dir}: no {REFERENCE}; this model was deployed before drift monitoring "
            f"existed. Run `lifecycle run` to deploy one that carries its reference."
        )
    deployed = (read_deployment(bundle_dir) or {}).get("reference_pii", "keep")  # older bundles: texts as they came
    if deployed != cfg.serve.log_pii:
        raise DataError(
            f"{bundle_dir}: the champion's drift reference holds its texts as serve.log_pii={deployed} "
            f"made them, and the prediction log stores them as serve.log_pii={cfg.serve.log_pii}: no "
            f"verdict, it would measure the difference of the two. Set serve.log_pii={deployed}, or "
            f"deploy a champion with `lifecycle run` under the new setting"
        )
    reference = pd.read_parquet(reference_file)
    current = profile_texts(OnnxClassifier(bundle_dir), texts) if texts else reference.iloc[:0]
    result, snapshot = check_drift(reference, current, cfg.monitor)
    write_report(result, snapshot, out_dir)
    return result


def verdict(result: DriftResult) -> str:
    return f"drift {'DETECTED' if result.drift_detected else 'not detected'} ({result.reason})"


def feature_lines(result: DriftResult, top: int = 5) -> list[str]:
    """The sizes compared and the most drifted features, for people."""
    lines = [f"  {result.current_size} current texts vs {result.reference_size} reference texts"]
    for feature in (result.drifted() or result.features)[:top]:
        lines.append(
            f"  {'*' if feature.drifted else ' '} {feature.feature:<22} {feature.kind:<16} "
            f"{feature.method} = {feature.score:.4g} (threshold {feature.threshold:g})"
        )
    return lines
