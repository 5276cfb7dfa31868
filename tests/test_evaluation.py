import numpy as np
import pytest

from components.config import GateConfig
from components.evaluate.core import decide_gate
from components.scoring import score

LABELS = ["ham", "spam"]


def test_score_computes_cross_entropy_accuracy_and_per_class_figures():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    targets = np.array([0, 1, 1, 1])
    metrics = score(probabilities, targets, LABELS)
    assert metrics.test_accuracy == pytest.approx(0.75)
    assert metrics.test_loss == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.7])))
    assert metrics.confusion == [[1, 0], [1, 2]]
    assert metrics.per_class["spam"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert metrics.per_class["ham"]["precision"] == pytest.approx(0.5)
    assert metrics.test_roc_auc == pytest.approx(1.0)  # every spam scores above the ham
    assert metrics.test_size == 4


def test_roc_auc_is_left_out_for_more_than_two_classes():
    probabilities = np.eye(3)[[0, 1, 2, 2]] * 0.9 + 0.1 / 3
    metrics = score(probabilities, np.array([0, 1, 2, 1]), ["a", "b", "c"])
    assert metrics.test_roc_auc is None and metrics.test_accuracy == pytest.approx(0.75)


def metrics_with_accuracy(accuracy: float):
    n = 100
    right = round(accuracy * n)
    targets = np.array([0, 1] * (n // 2))
    probabilities = np.eye(2)[np.where(np.arange(n) < right, targets, 1 - targets)] * 0.8 + 0.1
    return score(probabilities, targets, LABELS)


def test_gate_refuses_a_model_below_the_configured_floor():
    decision = decide_gate(metrics_with_accuracy(0.90), GateConfig(min_accuracy=0.95))
    assert not decision.passed and "test_accuracy 0.9000 vs minimum 0.9500" in decision.reasons


def test_gate_can_require_beating_the_baseline_and_a_floor_for_the_worst_slice():
    worst = {"slicing": "length", "slice": "short (<= 20 chars)", "size": 30, "accuracy": 0.8}
    strict = GateConfig(min_accuracy=0.9, beat_baseline=True, min_slice_accuracy=0.85)
    decision = decide_gate(metrics_with_accuracy(0.95), strict, baseline=metrics_with_accuracy(0.96), worst=worst)
    assert not decision.passed
    assert decision.reasons == [
        "test_accuracy 0.9500 vs linear baseline 0.9600",
        "worst slice length=short (<= 20 chars) (30 texts) accuracy 0.8000 vs minimum 0.8500",
    ]
    lenient = GateConfig(min_accuracy=0.9)  # by default neither rule applies
    assert decide_gate(metrics_with_accuracy(0.95), lenient, baseline=metrics_with_accuracy(0.96), worst=worst).passed
