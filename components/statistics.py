"""How sure stage 5's figures are: bootstrap intervals, calibration (expected calibration error, temperature
scaling) and the paired test of two models on the same texts. Pure functions of arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def bootstrap_intervals(
    targets: np.ndarray, predicted: np.ndarray, n_classes: int, seed: int, resamples: int = 1000, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of accuracy and macro-F1 (texts resampled with replacement, seeded)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(targets), size=(resamples, len(targets)))
    true, guess = targets[picks], predicted[picks]
    f1 = []
    for k in range(n_classes):  # macro-F1 over every class, as `score` computes it (an absent class scores 0)
        hits = ((guess == k) & (true == k)).sum(axis=1)
        wrong = ((guess == k) & (true != k)).sum(axis=1) + ((guess != k) & (true == k)).sum(axis=1)
        f1.append(np.where(hits > 0, 2 * hits / np.maximum(2 * hits + wrong, 1), 0.0))
    tails = [50 * (1 - level), 50 * (1 + level)]
    return {
        name: tuple(float(v) for v in np.percentile(values, tails))
        for name, values in (("accuracy", (true == guess).mean(axis=1)), ("macro_f1", np.mean(f1, axis=0)))
    }


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def cross_entropy(probabilities: np.ndarray, targets: np.ndarray) -> float:
    return float(-np.log(np.clip(probabilities[np.arange(len(targets)), targets], 1e-12, 1.0)).mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T that minimises the cross-entropy of softmax(logits / T) (searched on log T)."""
    from scipy.optimize import minimize_scalar

    found = minimize_scalar(
        lambda log_t: cross_entropy(softmax(logits, np.exp(log_t)), targets),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
    )
    return float(np.exp(found.x))


@dataclass
class Calibration:
    temperature: float  # 1.0 when scaling did not lower the validation cross-entropy
    fitted_temperature: float
    val_loss_before: float
    val_loss_after: float

    @property
    def kept(self) -> bool:
        return self.temperature != 1.0


def calibrate(val_logits: np.ndarray, val_targets: np.ndarray) -> Calibration:
    """Temperature scaling fitted on the validation split, kept only where it lowers its cross-entropy."""
    fitted = fit_temperature(val_logits, val_targets)
    before = cross_entropy(softmax(val_logits), val_targets)
    after = cross_entropy(softmax(val_logits, fitted), val_targets)
    return Calibration(fitted if after < before else 1.0, fitted, before, min(after, before))


def reliability(probabilities: np.ndarray, targets: np.ndarray, bins: int = 10) -> tuple[float, list[dict]]:
    """Expected calibration error (confidence against accuracy, weighted by bin size) and the bins behind it."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == targets
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    rows, error = [], 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            rows.append(
                {
                    "low": b / bins,
                    "high": (b + 1) / bins,
                    "count": int(inside.sum()),
                    "confidence": float(confidence[inside].mean()),
                    "accuracy": float(correct[inside].mean()),
                }
            )
            error += inside.mean() * abs(rows[-1]["accuracy"] - rows[-1]["confidence"])
    return float(error), rows


@dataclass
class PairedComparison:
    """A challenger against the champion on the same test texts."""

    champion_version: str
    champion_accuracy: float
    challenger_only_right: int  # texts the challenger gets right and the champion wrong
    champion_only_right: int
    p_value: float  # exact McNemar: two-sided binomial test on the texts where the two disagree

    @property
    def disagreements(self) -> int:
        return self.challenger_only_right + self.champion_only_right


def paired_verdict(new_only_right: int, old_only_right: int, p_value: float, significance: float) -> str:
    """'better', 'worse' or 'no significant difference': the new model against the old on the same texts."""
    if p_value < significance and new_only_right != old_only_right:
        return "better" if new_only_right > old_only_right else "worse"
    return "no significant difference"


def mcnemar_exact(first_only: int, second_only: int) -> float:
    """Two-sided exact McNemar p-value of a paired table's discordant counts."""
    from scipy.stats import binomtest

    if first_only + second_only == 0:
        return 1.0
    return float(binomtest(min(first_only, second_only), first_only + second_only, 0.5).pvalue)


def compare_paired(
    challenger_correct: np.ndarray, champion_correct: np.ndarray, champion_version: str
) -> PairedComparison:
    challenger_only = int((challenger_correct & ~champion_correct).sum())
    champion_only = int((champion_correct & ~challenger_correct).sum())
    return PairedComparison(
        champion_version,
        float(champion_correct.mean()),
        challenger_only,
        champion_only,
        mcnemar_exact(challenger_only, champion_only),
    )
