"""A classifier's test metrics from its class probabilities, as a pure function: stage 5 reports them and gates
on them, stage 6 holds the int8 graph to fp32's with them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from components.statistics import cross_entropy


@dataclass
class TestMetrics:
    test_loss: float  # cross-entropy
    test_accuracy: float
    test_macro_precision: float
    test_macro_recall: float
    test_macro_f1: float
    test_roc_auc: float | None  # two classes only
    test_size: int
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]  # rows: true label, columns: predicted

    def scalars(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if isinstance(v, (int, float)) and v is not None}


def score(probabilities: np.ndarray, targets: np.ndarray, labels: list[str]) -> TestMetrics:
    """The test metrics of class probabilities against true class indices (a pure function)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predicted, labels=range(len(labels)), zero_division=0
    )
    auc = None
    if len(labels) == 2 and len(set(targets.tolist())) == 2:
        auc = float(roc_auc_score(targets, probabilities[:, 1]))
    return TestMetrics(
        test_loss=cross_entropy(probabilities, targets),
        test_accuracy=float((predicted == targets).mean()),
        test_macro_precision=float(precision.mean()),
        test_macro_recall=float(recall.mean()),
        test_macro_f1=float(f1.mean()),
        test_roc_auc=auc,
        test_size=int(len(targets)),
        per_class={
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
        confusion=confusion_matrix(targets, predicted, labels=range(len(labels))).tolist(),
    )


def class_indices(rows: pd.DataFrame, labels: list[str]) -> np.ndarray:
    return np.array([labels.index(v) for v in rows["label"]])
