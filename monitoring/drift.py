"""Stage 7's drift check: a window of served texts (current) against training texts (reference), both as the served
model sees them, measured with Evidently. `decide_drift` is the verdict; the rest gathers what it decides on."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import MonitorConfig
from components.handoff import DRIFT_REPORT, DRIFT_SUMMARY

DESCRIPTORS = {"length": "TextLength", "word_count": "WordCount", "non_letter_share": "NonLetterCharacterPercentage"}
EMBEDDING = "embedding"
EMBEDDING_PLOT_ROWS = 300
CATEGORICAL_METHODS = {"chisquare", "z"}  # of the per-row features: those of categories (z: of a yes/no share)


@dataclass
class FeatureDrift:
    feature: str
    kind: str  # "text descriptor", "text content", "prediction" (a response's, for a generator) or "embedding"
    method: str
    threshold: float
    score: float
    drifted: bool


@dataclass
class DriftResult:
    drift_detected: bool
    drifted_share: float
    reference_size: int
    current_size: int
    reason: str
    features: list[FeatureDrift] = field(default_factory=list)

    def drifted(self) -> list[FeatureDrift]:
        return [f for f in self.features if f.drifted]

    def to_dict(self) -> dict:
        return asdict(self)


def profile_texts(classifier, texts: list[str]) -> pd.DataFrame:
    """Texts as the model sees them: predicted label, class probabilities (all but the first label's, which the
    others determine) and the sentence embedding, from one pass of the ONNX graph."""
    from components.deploy.onnx_classifier import EMBEDDING_OUTPUT
    from components.statistics import softmax

    logits, embeddings = classifier.run(texts, ["logits", EMBEDDING_OUTPUT])
    probabilities = softmax(logits, classifier.temperature)  # as served
    frame = pd.DataFrame({"text": texts, "predicted_label": [classifier.labels[i] for i in probabilities.argmax(1)]})
    for k, label in enumerate(classifier.labels[1:], start=1):
        frame[f"probability_{label}"] = probabilities[:, k]
    frame[EMBEDDING] = list(embeddings.astype(np.float32))
    return frame


def decide_drift(
    features: list[FeatureDrift], current_size: int, min_window: int, drift_share: float
) -> tuple[bool, str]:
    """Drift when at least `drift_share` of the features drifted (Evidently's data set drift rule): one feature
    alone moves by chance too often to start a retraining."""
    if current_size < min_window:
        return False, f"only {current_size} texts in the window, fewer than monitor.min_window={min_window}: no verdict"
    drifted = [f.feature for f in features if f.drifted]
    share = len(drifted) / len(features)
    verdict = share >= drift_share
    detail = f"{len(drifted)} of {len(features)} features drifted ({share:.0%}; drift at {drift_share:.0%})"
    return verdict, detail + (": " + ", ".join(drifted) if drifted else "")


def prediction_columns(reference: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """A classifier's profiled outputs, each as (kind, Evidently method): the label and its probabilities."""
    return {
        c: ("prediction", "chisquare" if c == "predicted_label" else "ks")
        for c in reference.columns
        if c == "predicted_label" or c.startswith("probability_")
    }


def check_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    cfg: MonitorConfig,
    columns: dict[str, tuple[str, str]] | None = None,
):
    """(DriftResult, the Evidently snapshot or None when the window is too small for a verdict). Every profile has
    `text` (its descriptors and text content are checked) and the embedding; `columns` are its other features, each
    (kind, Evidently method), a classifier's predictions unless given."""
    if len(current) < cfg.min_window:
        verdict, reason = decide_drift([], len(current), cfg.min_window, cfg.drift_share)
        return DriftResult(verdict, 0.0, len(reference), len(current), reason), None
    from evidently import Report
    from evidently.legacy.metrics.data_drift import embeddings_drift
    from evidently.legacy.utils import data_drift_utils
    from evidently.metrics import EmbeddingsDrift, ValueDrift
    from evidently.metrics.embeddings import ModelDriftMethod

    data_drift_utils.roc_auc_random_classifier_percentile = random_auc_percentile
    # The embeddings' plot is a t-SNE of up to this many rows of each side (Evidently's 2,500: seconds of the check);
    # its verdict uses every row.
    embeddings_drift.SAMPLE_CONSTANT = EMBEDDING_PLOT_ROWS

    columns = prediction_columns(reference) if columns is None else columns
    kinds = (
        {name: "text descriptor" for name in DESCRIPTORS}
        | {"text": "text content"}
        | {name: kind for name, (kind, _) in columns.items()}
    )
    metrics = [ValueDrift(column=name, method="ks", threshold=cfg.p_value) for name in DESCRIPTORS]
    metrics.append(ValueDrift(column="text", method="perc_text_content_drift", threshold=cfg.text_quantile))
    metrics += [ValueDrift(column=name, method=method, threshold=cfg.p_value) for name, (_, method) in columns.items()]
    metrics.append(
        EmbeddingsDrift(
            embeddings_name=EMBEDDING, drift_method=ModelDriftMethod(threshold=cfg.embedding_auc, bootstrap=False)
        )
    )
    snapshot = Report(metrics, include_tests=True).run(
        current_data=_dataset(current, columns), reference_data=_dataset(reference, columns)
    )
    features = _features(snapshot.dict(), kinds, cfg.embedding_auc)
    verdict, reason = decide_drift(features, len(current), cfg.min_window, cfg.drift_share)
    share = sum(f.drifted for f in features) / len(features)
    return DriftResult(verdict, share, len(reference), len(current), reason, features), snapshot


def random_auc_percentile(y_test: np.ndarray, p_value: float = 0.05, iter_num: int = 1000, seed: int = 42) -> float:
    """Evidently's roc_auc_random_classifier_percentile (the threshold of its text content drift: the AUC that
    random scores exceed with probability p_value), the same numbers from the same seeds, without its 1000 calls
    of scikit-learn's roc_auc_score (about 5 s a check): with no ties, the AUC of random scores is the Mann-Whitney
    statistic of their ranks."""
    y = np.asarray(y_test)
    positive = y == 1
    n_positive, n_negative = int(positive.sum()), int((~positive).sum())
    if not n_positive or not n_negative:
        raise ValueError("Only one class present in y_true. ROC AUC score is not defined in that case.")
    np.random.seed(seed)
    seeds = np.random.randint(0, iter_num * 10, size=iter_num)
    scores = np.empty((iter_num, len(y)))
    for row, each in enumerate(seeds):
        np.random.seed(each)
        scores[row] = np.random.rand(len(y))
    ranks = scores.argsort(axis=1).argsort(axis=1) + 1
    aucs = (ranks[:, positive].sum(axis=1) - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)
    return float(np.percentile(aucs, 100 * (1 - p_value)))


def _dataset(frame: pd.DataFrame, columns: dict[str, tuple[str, str]]):
    from evidently import DataDefinition, Dataset
    from evidently import descriptors as evidently_descriptors

    vectors = np.stack(frame[EMBEDDING].to_numpy())
    dims = [f"{EMBEDDING}_{i}" for i in range(vectors.shape[1])]
    table = pd.concat([frame[["text", *columns]].reset_index(drop=True), pd.DataFrame(vectors, columns=dims)], axis=1)
    categorical = [name for name, (_, method) in columns.items() if method in CATEGORICAL_METHODS]
    definition = DataDefinition(
        text_columns=["text"],
        categorical_columns=categorical,
        numerical_columns=[name for name in columns if name not in categorical],
        embeddings={EMBEDDING: dims},
    )
    descriptors = [getattr(evidently_descriptors, kind)("text", alias=name) for name, kind in DESCRIPTORS.items()]
    return Dataset.from_pandas(table, data_definition=definition, descriptors=descriptors)


def _features(snapshot: dict, kinds: dict[str, str], embedding_auc: float) -> list[FeatureDrift]:
    # ValueDrift's verdict is its test's status; EmbeddingsDrift has no test: its score is the domain classifier's
    # ROC AUC, which drifts above the threshold (bootstrap off, so that rule is the whole rule).
    failed = {t["metric_config"]["metric_id"] for t in snapshot["tests"] if t["status"] == "FAIL"}
    features = []
    for metric in snapshot["metrics"]:
        config, score = metric["config"], float(metric["value"])
        if "column" in config:
            features.append(
                FeatureDrift(
                    config["column"],
                    kinds[config["column"]],
                    config["method"],
                    config["threshold"],
                    score,
                    metric["id"] in failed,
                )
            )
        else:
            features.append(
                FeatureDrift(
                    EMBEDDING, "embedding", "domain classifier ROC AUC", embedding_auc, score, score > embedding_auc
                )
            )
    return features


def write_report(result: DriftResult, snapshot, out_dir: str | Path) -> Path:
    """drift_summary.json (the verdict, each feature's score and method) and drift_report.html (Evidently)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / DRIFT_SUMMARY).write_text(json.dumps(result.to_dict(), indent=2))
    if snapshot is not None:
        snapshot.save_html(str(out / DRIFT_REPORT))
    return out / DRIFT_SUMMARY
