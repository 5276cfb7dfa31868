"""Stage 5's extra scrutiny on hand-made numbers: intervals, calibration, the paired gate, slices, robustness,
the baseline."""

import numpy as np
import pandas as pd
import pytest

from components.statistics import bootstrap_intervals, calibrate, compare_paired, mcnemar_exact, reliability, softmax


def test_each_bootstrap_interval_contains_its_point_estimate_and_narrows_with_more_texts():
    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 2000):
        targets = rng.integers(0, 3, n)
        predicted = np.where(rng.random(n) < 0.8, targets, rng.integers(0, 3, n))
        intervals = bootstrap_intervals(targets, predicted, 3, seed=1)
        accuracy = (targets == predicted).mean()
        from sklearn.metrics import f1_score

        macro_f1 = f1_score(targets, predicted, average="macro")
        assert intervals["accuracy"][0] <= accuracy <= intervals["accuracy"][1]
        assert intervals["macro_f1"][0] <= macro_f1 <= intervals["macro_f1"][1]
        widths.append(intervals["accuracy"][1] - intervals["accuracy"][0])
    assert widths[1] < widths[0] / 2
    assert bootstrap_intervals(targets, predicted, 3, seed=1) == bootstrap_intervals(targets, predicted, 3, seed=1)


def test_mcnemar_gives_the_exact_binomial_p_value_of_a_hand_made_table():
    assert mcnemar_exact(1, 6) == pytest.approx(2 * (1 + 7) / 2**7)  # 0.125
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 2**10)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    challenger = np.array([True] * 90 + [False] * 10)
    champion = np.array([True] * 88 + [False] * 2 + [True] * 3 + [False] * 7)
    comparison = compare_paired(challenger, champion, "4")
    assert (comparison.challenger_only_right, comparison.champion_only_right) == (2, 3)
    assert comparison.p_value == pytest.approx(mcnemar_exact(2, 3)) and comparison.champion_accuracy == 0.91


def test_temperature_scaling_is_kept_only_where_it_lowers_the_validation_cross_entropy():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, 400)
    confident = np.where(rng.random(400) < 0.85, targets, 1 - targets)  # right 85% of the time...
    logits = np.stack([np.where(confident == 0, 6.0, -6.0), np.where(confident == 1, 6.0, -6.0)], axis=1)
    overconfident = calibrate(logits, targets)  # ...but ~100% sure: a higher temperature helps
    assert overconfident.kept and overconfident.temperature > 1.5
    assert overconfident.val_loss_after < overconfident.val_loss_before
    error_before, _ = reliability(softmax(logits), targets)
    error_after, bins = reliability(softmax(logits, overconfident.temperature), targets)
    assert error_after < error_before and sum(b["count"] for b in bins) == 400


@pytest.mark.parametrize(
    "challenger_only, champion_only, rule, passes",
    [
        (0, 1, "not_worse", True),  # one text worse: p = 1, not worse statistically
        (0, 12, "not_worse", False),  # clearly worse: p < 0.001
        (3, 2, "better", False),  # better by one text is not better statistically
        (12, 0, "better", True),
    ],
)
def test_the_gate_against_the_champion_counts_only_what_is_significant(challenger_only, champion_only, rule, passes):
    from components.config import GateConfig
    from components.evaluate.core import decide_gate
    from components.scoring import score
    from components.statistics import PairedComparison

    targets = np.array([0, 1] * 100)
    metrics = score(np.eye(2)[targets] * 0.9 + 0.05, targets, ["ham", "spam"])
    comparison = PairedComparison(
        "2", 0.99, challenger_only, champion_only, mcnemar_exact(challenger_only, champion_only)
    )
    gate = decide_gate(metrics, GateConfig(min_accuracy=0.5, champion_rule=rule, significance=0.05), comparison)
    assert gate.passed is passes
    reason = next(r for r in gate.reasons if "champion" in r)
    assert f"{challenger_only} texts" in reason and f"{champion_only}" in reason and "p = " in reason


def test_slices_of_each_kind_sum_to_the_whole_and_the_worst_is_named():
    from components.evaluate.slices import slice_metrics, worst_slice

    texts = [("word " * n).strip() for n in range(1, 61)]
    test = pd.DataFrame({"text": texts, "source": ["data"] * 50 + ["feedback"] * 10, "group": ["en", "fr", None] * 20})
    targets = np.array([0, 1] * 30)
    predicted = targets.copy()
    predicted[50:] = 1 - predicted[50:]  # feedback all wrong
    rows = slice_metrics(test, targets, predicted)
    for slicing in ("length", "source", "group"):
        assert sum(r["size"] for r in rows if r["slicing"] == slicing) == 60
    assert {r["slice"] for r in rows if r["slicing"] == "group"} == {"en", "fr", "(none)"}
    assert worst_slice(rows, min_size=5)["slice"] == "feedback" and worst_slice(rows, min_size=11)["accuracy"] > 0


def test_a_perturbation_that_changes_no_text_drops_nothing_and_typos_are_seeded():
    import random

    from components.evaluate.robustness import PERTURBATIONS, robustness, typos

    texts = ["claim your free prize now", "see you at lunch tomorrow"] * 10
    targets = np.array([1, 0] * 10)

    def predict(batch):  # spam when "free" or "prize" survives the perturbation
        return np.array([[0.0, 1.0] if ("free" in t.lower() or "prize" in t.lower()) else [1.0, 0.0] for t in batch])

    rows = robustness(predict, texts, targets, 1.0, seed=0, perturbations={"none": lambda t, rng: t, **PERTURBATIONS})
    by_name = {r["perturbation"]: r for r in rows}
    assert by_name["none"]["drop"] == 0 and by_name["none"]["changed_share"] == 0
    assert by_name["uppercase"]["drop"] == 0 and by_name["uppercase"]["changed_share"] == 1
    assert (
        typos("claim your free prize now", random.Random(3), rate=1.0)
        == typos("claim your free prize now", random.Random(3), rate=1.0)
        != "claim your free prize now"
    )


def test_the_linear_baseline_learns_two_vocabularies():
    from conftest import make_texts

    from components.evaluate.baseline import baseline_probabilities

    rows = make_texts(200)
    targets = (rows["label"] == "spam").to_numpy().astype(int)
    probabilities = baseline_probabilities(
        rows["text"][:150].tolist(), targets[:150], rows["text"][150:].tolist(), 2, seed=0
    )
    assert probabilities.shape == (50, 2) and (probabilities.argmax(1) == targets[150:]).mean() >= 0.9
