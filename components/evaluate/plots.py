"""Stage 5's figures, for MLflow and people: the confusion matrix, the training curves, the reliability diagram."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.scoring import TestMetrics


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


def plot_reliability(before: list[dict], after: list[dict], temperature: float, path: str | Path) -> None:
    """Accuracy against confidence per bin, before and after temperature scaling (the diagonal is calibrated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="calibrated")
    for bins, name in ((before, "as trained"), (after, f"temperature {temperature:.2f}")):
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label=name)
    ax.set_xlabel("confidence (highest probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability on the test split")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
