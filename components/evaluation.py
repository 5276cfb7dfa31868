"""Stage 5, evaluation and validation: test-split metrics, figures, and the gate (thresholds and champion)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from components.handoff import read_manifest
from components.model_init import load_classifier
from components.text_batches import encode, predict_logits

# Texts -> class probabilities (rows in the order of `labels`); how a registered champion is scored.
Predictor = Callable[[list[str]], np.ndarray]


@dataclass
class TestMetrics:
    test_loss: float  # cross-entropy
    test_accuracy: float
    test_macro_precision: float
    test_macro_recall: float
    test_macro_f1: float
    test_roc_auc: Optional[float]  # two classes only
    test_size: int
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]  # rows: true label, columns: predicted

    def scalars(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if isinstance(v, (int, float)) and v is not None}


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)  # why it failed, or what it checked when it passed
    champion_metrics: Optional[dict] = None


def score(probabilities: np.ndarray, targets: np.ndarray, labels: list[str]) -> TestMetrics:
    """The test metrics of class probabilities against true class indices (a pure function)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    predicted = probabilities.argmax(axis=1)
    picked = np.clip(probabilities[np.arange(len(targets)), targets], 1e-12, 1.0)
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predicted, labels=range(len(labels)), zero_division=0
    )
    auc = None
    if len(labels) == 2 and len(set(targets.tolist())) == 2:
        auc = float(roc_auc_score(targets, probabilities[:, 1]))
    return TestMetrics(
        test_loss=float(-np.log(picked).mean()),
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


def decide_gate(metrics: TestMetrics, min_accuracy: float, min_macro_f1: float,
                champion: Optional[TestMetrics], champion_tolerance: float) -> GateDecision:
    """Does this model pass? The configured floors, and no worse than the champion on the same test data."""
    failures, checked = [], []
    for name, value, floor in (("test_accuracy", metrics.test_accuracy, min_accuracy),
                               ("test_macro_f1", metrics.test_macro_f1, min_macro_f1)):
        line = f"{name} {value:.4f} vs minimum {floor:.4f}"
        (checked if value >= floor else failures).append(line)
    if champion is not None:
        floor = champion.test_accuracy - champion_tolerance
        line = f"test_accuracy {metrics.test_accuracy:.4f} vs champion {champion.test_accuracy:.4f}"
        if champion_tolerance:
            line += f" (tolerance {champion_tolerance:.4f})"
        (checked if metrics.test_accuracy >= floor else failures).append(line)
    return GateDecision(
        passed=not failures,
        reasons=failures or checked,
        champion_metrics=champion.scalars() if champion else None,
    )


def evaluate_model(model_dir: str, data_dir: str, max_length: int, batch_size: int, device: str, precision: str):
    """Class probabilities of the fine-tuned model on the test split, with the true class indices."""
    import torch

    labels = read_manifest(data_dir)["labels"]
    test = pd.read_parquet(Path(data_dir) / "test.parquet")
    model, tokenizer = load_classifier(model_dir, labels)
    model.to(device)
    split = encode(tokenizer, test["text"].tolist(), max_length, [labels.index(v) for v in test["label"]])
    logits = predict_logits(model, split, batch_size, tokenizer.pad_token_id, device, precision)
    return torch.softmax(logits, dim=-1).numpy(), split.labels, labels, test


def plot_confusion(metrics: TestMetrics, labels: list[str], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(metrics.confusion)
    fig, ax = plt.subplots(figsize=(4 + len(labels) * 0.4, 3.5 + len(labels) * 0.4))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Test confusion matrix (n={metrics.test_size}, accuracy {metrics.test_accuracy:.2%})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(history: list[dict], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss_ax.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train")
    loss_ax.plot(epochs, [r["val_loss"] for r in history], marker="o", label="validation")
    loss_ax.set_title("Cross-entropy loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.legend()
    acc_ax.plot(epochs, [r["val_accuracy"] for r in history], marker="o", color="tab:green")
    acc_ax.set_title("Validation accuracy")
    acc_ax.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
