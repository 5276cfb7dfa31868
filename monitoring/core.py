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

GENERATED = ("response", "finish_reason")  # a generator's answer, logged beside its prompt and profiled with it


def current_texts(cfg: LifecycleConfig, current_path: str | None, skipped: SkippedRecords) -> tuple[pd.DataFrame, str]:
    """(the texts in the prediction log's form, column text, with a generator's responses and finish reasons where
    the input has them, and where they came from): the file named (here or in monitor.current), else the prediction
    log's last monitor.window_hours. Either may be a storage URI. Damaged records, and rows without a text, are
    skipped and counted in `skipped`; an empty window is no error, a window of nothing but damaged input is."""
    path = current_path or cfg.monitor.current
    if path:  # put in the prediction log's form, which the reference is in (a log's texts are already)
        current, source = _file_texts(cfg, path, skipped), str(path)
        for column in [c for c in ("text", "response") if c in current.columns]:
            current[column] = in_log_form(cfg, current[column].fillna("").tolist())
    else:
        from monitoring.prediction_log import answered, read_window

        log = cfg.predictions_uri()  # what clients received: a rollout's shadow scores would count texts twice
        window = answered(read_window(log, cfg.monitor.window_hours, skipped=skipped))
        if "finish_reason" in window.columns:  # a response whose client went away is cut short by it, not drift
            window = window[window["finish_reason"].ne("cancelled")]
        current = window[[c for c in ("text", *GENERATED) if c in window.columns]]
        source = f"prediction log {log}, last {cfg.monitor.window_hours:g} h"
    if current.empty and skipped.examples:
        raise DataError(f"{source}: nothing usable: {skipped.summary()}, e.g. {skipped.examples[0]}")
    return current.reset_index(drop=True), source


def _file_texts(cfg: LifecycleConfig, path: str, skipped: SkippedRecords) -> pd.DataFrame:
    """A prediction log file or any JSONL/Parquet file is read as such; other files in the training data's format.
    Column text, and a generator's response and finish_reason when the file has both."""
    import tempfile

    from components.data.table_readers import format_of, read_source, table_format

    data = cfg.data
    with tempfile.TemporaryDirectory(prefix="lifecycle-current-") as scratch:
        frame = read_source(path, format_of(path, table_format(data)), scratch, skipped)
    from monitoring.prediction_log import answered

    frame = answered(frame)  # a prediction log's file: what clients received, not a rollout's shadow scores
    if frame.empty:
        return pd.DataFrame(columns=["text"])
    candidates = list(dict.fromkeys((data.text_column, "text")))  # the training data's column, or the log's
    column = next((c for c in candidates if c in frame.columns), None)
    if column is None:
        expected = " or ".join(map(repr, candidates))
        raise DataError(f"{path}: no text column; expected {expected}, found {list(frame.columns)}")
    usable = frame[column].map(lambda t: isinstance(t, str) and bool(t.strip())).astype(bool)
    for row in frame.index[~usable]:
        skipped.record(path, row, "no text")
    generated = list(GENERATED) if set(GENERATED) <= set(frame.columns) else []
    return frame.loc[usable, [column, *generated]].rename(columns={column: "text"})


def in_log_form(cfg: LifecycleConfig, texts: list[str]) -> list[str]:
    """Texts as the prediction log stores them (serve.log_pii), as drift is measured on them."""
    from components.pii import LogPii

    return LogPii.of(cfg).drift_form()(texts)


def monitor(bundle_dir: str | Path, current: pd.DataFrame, cfg: LifecycleConfig, out_dir: str | Path) -> DriftResult:
    """Profile `current` (current_texts' columns, in the prediction log's form) as the bundle's reference was
    profiled, compare the two, write the report. A reference in another form than the log's is refused: the verdict
    would measure the difference of the forms, and could start a retraining for it."""
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
    result, snapshot = _check(bundle_dir, pd.read_parquet(reference_file), current, cfg)
    write_report(result, snapshot, out_dir)
    return result


def _check(bundle_dir: str | Path, reference: pd.DataFrame, current: pd.DataFrame, cfg: LifecycleConfig):
    """A classifier's texts profiled by its ONNX model; a generator's prompts, and its responses where `current`
    has them (a test split has none: its prompts alone are compared, as generating its responses would repeat
    stage 6's work for minutes)."""
    if cfg.task == "generation":
        from monitoring.generation_drift import check_generation_drift, profile_generations

        return check_generation_drift(reference, profile_generations(current), cfg.monitor)
    from components.deploy.onnx_classifier import OnnxClassifier

    texts = current["text"].tolist()
    profiled = profile_texts(OnnxClassifier(bundle_dir), texts) if texts else reference.iloc[:0]
    return check_drift(reference, profiled, cfg.monitor)


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
