"""Stage 5, evaluation and validation: test-split metrics and how sure they are, the baseline, calibration, slices,
robustness, the test cases, fairness between groups, mistakes, and the gate (floors, the paired test against the
champion, the test cases' and fairness's limits)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields, is_dataclass

import numpy as np
import pandas as pd

from components.config import GateConfig
from components.config.schema_evaluation import FairnessConfig, TestCasesConfig
from components.handoff import SPLITS, read_manifest, read_split
from components.model.loading import load_classifier
from components.scoring import TestMetrics, class_indices, score
from components.statistics import Calibration, PairedComparison, cross_entropy, paired_verdict, softmax
from components.text_batches import EncodedSplit, encode, predict_logits

# Texts -> class probabilities (rows in the order of `labels`); how a registered champion is scored.
Predictor = Callable[[list[str]], np.ndarray]


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)  # why it failed, or what it checked when it passed


def decide_gate(
    metrics: TestMetrics,
    gate: GateConfig,
    champion: PairedComparison | None = None,
    baseline: TestMetrics | None = None,
    worst: dict | None = None,
    more: Iterable[tuple[bool, str]] = (),
) -> GateDecision:
    """Does this model pass? The configured floors; against the champion on the same test texts, the paired test
    under gate.champion_rule; optionally above the baseline and the worst slice's floor; and `more` checks as
    (passed, line): the test cases' floors and fairness's gaps."""
    failures, checked = [], []

    def check(passed: bool, line: str) -> None:
        (checked if passed else failures).append(line)

    for name, value, floor in (
        ("test_accuracy", metrics.test_accuracy, gate.min_accuracy),
        ("test_macro_f1", metrics.test_macro_f1, gate.min_macro_f1),
    ):
        check(value >= floor, f"{name} {value:.4f} vs minimum {floor:.4f}")
    if champion is not None:
        verdict = paired_verdict(
            champion.challenger_only_right, champion.champion_only_right, champion.p_value, gate.significance
        )
        check(
            verdict == "better" if gate.champion_rule == "better" else verdict != "worse",
            f"vs champion version {champion.champion_version} ({champion.champion_accuracy:.4f}): right alone on "
            f"{champion.challenger_only_right} texts, the champion alone on {champion.champion_only_right}; exact "
            f"McNemar p = {champion.p_value:.3g} at level {gate.significance:g}: {verdict} (rule "
            f"{gate.champion_rule})",
        )
    if gate.beat_baseline and baseline is not None:
        check(
            metrics.test_accuracy > baseline.test_accuracy,
            f"test_accuracy {metrics.test_accuracy:.4f} vs linear baseline {baseline.test_accuracy:.4f}",
        )
    if gate.min_slice_accuracy is not None and worst is not None:
        check(
            worst["accuracy"] >= gate.min_slice_accuracy,
            f"worst slice {worst['slicing']}={worst['slice']} ({worst['size']} texts) accuracy "
            f"{worst['accuracy']:.4f} vs minimum {gate.min_slice_accuracy:.4f}",
        )
    for passed, line in more:
        check(passed, line)
    return GateDecision(passed=not failures, reasons=failures or checked)


def load_logits_predictor(
    model_dir: str, labels: list[str], max_length: int, batch_size: int, device: str, precision: str
) -> Callable[[list[str]], np.ndarray]:
    """The fine-tuned model as texts -> logits (rows in the order of the texts). A text whose tokens the model
    has already seen is not run again: many perturbations of the robustness check leave the tokens as they were
    (an uncased tokenizer undoes a change of case; extra whitespace is no token)."""
    model, tokenizer = load_classifier(model_dir, labels)
    model.to(device)
    seen: dict[tuple[int, ...], np.ndarray] = {}

    def logits(texts: list[str]) -> np.ndarray:
        ids = [tuple(row) for row in encode(tokenizer, texts, max_length).input_ids]
        new = list(dict.fromkeys(row for row in ids if row not in seen))
        if new:
            found = (
                predict_logits(
                    model,
                    EncodedSplit([list(row) for row in new], None),
                    batch_size,
                    tokenizer.pad_token_id,
                    device,
                    precision,
                )
                .float()
                .numpy()
            )
            seen.update(zip(new, found))
        return np.stack([seen[row] for row in ids]) if ids else np.empty((0, model.config.num_labels), np.float32)

    return logits


@dataclass
class Evaluation:
    """Everything stage 5 finds about a model on the test split (probabilities as served: calibrated when the
    temperature was kept)."""

    labels: list[str]
    metrics: TestMetrics
    loss_before_calibration: float
    intervals: dict[str, tuple[float, float]]  # accuracy, macro_f1: bootstrap 95%
    calibration: Calibration
    ece_before: float
    ece: float
    reliability_before: list[dict]
    reliability: list[dict]
    baseline: TestMetrics
    slices: list[dict]
    worst_slice: dict | None
    robustness: list[dict]
    test_cases: object  # suite_runs.TestCaseResults: the file's cases and the built-in robustness ones
    fairness: object | None  # fairness.FairnessReport, with data.group_column
    mistakes: pd.DataFrame  # the most confident: text, true, predicted, probability
    champion: PairedComparison | None
    test_logits: np.ndarray = field(repr=False, default=None)  # PyTorch's, before calibration; stage 6 reuses them

    def scalars(self) -> dict[str, float]:
        """The MLflow metrics, beside the test metrics."""
        found = self.metrics.scalars() | {
            "test_loss_before_calibration": self.loss_before_calibration,
            "temperature": self.calibration.temperature,
            "fitted_temperature": self.calibration.fitted_temperature,
            "val_loss_before_calibration": self.calibration.val_loss_before,
            "val_loss_after_calibration": self.calibration.val_loss_after,
            "test_ece_before_calibration": self.ece_before,
            "test_ece": self.ece,
            "baseline_test_accuracy": self.baseline.test_accuracy,
            "baseline_test_macro_f1": self.baseline.test_macro_f1,
            "gain_over_baseline": self.metrics.test_accuracy - self.baseline.test_accuracy,
        }
        for name, (low, high) in self.intervals.items():
            found |= {f"test_{name}_ci_low": low, f"test_{name}_ci_high": high}
        found |= {metric_name(f"slice.{r['slicing']}.{r['slice']}.accuracy"): r["accuracy"] for r in self.slices}
        found |= {f"robustness.{r['perturbation']}.accuracy": r["accuracy"] for r in self.robustness}
        found |= {f"robustness.{r['perturbation']}.drop": r["drop"] for r in self.robustness}
        found |= {metric_name(name): value for name, value in self.test_cases.scalars().items()}
        if self.fairness is not None:
            found |= {metric_name(name): value for name, value in self.fairness.scalars().items()}
        if self.worst_slice:
            found["worst_slice_accuracy"] = self.worst_slice["accuracy"]
        if self.champion:
            found |= {
                "champion_test_accuracy": self.champion.champion_accuracy,
                "champion_mcnemar_p_value": self.champion.p_value,
                "challenger_only_right": self.champion.challenger_only_right,
                "champion_only_right": self.champion.champion_only_right,
            }
        return found

    def tables(self) -> dict[str, pd.DataFrame]:
        """What the MLflow UI shows as tables (artifacts evaluation/<name>.json)."""
        return {
            "slices": pd.DataFrame(self.slices),
            "robustness": pd.DataFrame(self.robustness),
            "most_confident_mistakes": self.mistakes,
            "reliability": pd.DataFrame(self.reliability),
            "test_cases": self.test_cases.rows,
            "test_case_failures": self.test_cases.failures(),
            "test_case_examples": self.test_cases.examples,
        } | (
            {"fairness_by_group": self.fairness.by_group, "fairness_gaps": self.fairness.gaps} if self.fairness else {}
        )

    def to_dict(self) -> dict:
        found = {f.name: getattr(self, f.name) for f in fields(self)}
        found = {name: value for name, value in found.items() if name not in ("test_cases", "fairness", "test_logits")}
        return {name: asdict(value) if is_dataclass(value) else value for name, value in found.items()} | {
            "mistakes": self.mistakes.to_dict("records"),
            "test_cases": self.test_cases.rows.to_dict("records"),
            "fairness": self.fairness.records() if self.fairness else None,
        }


def metric_name(text: str) -> str:
    """`text` with what MLflow refuses in a metric name (a user's group value may hold anything) as `_`."""
    return re.sub(r"[^\w\-. :/]", "_", text)


@dataclass
class Behaviour:
    """What stage 5 holds a classifier to beyond its metrics: the test cases (a test_cases.TestSuite, or None for
    the built-in ones alone) and fairness between the groups stage 1 kept from data.group_column."""

    suite: object | None = None
    tests: TestCasesConfig = field(default_factory=TestCasesConfig)
    fairness: FairnessConfig = field(default_factory=FairnessConfig)
    group_column: str = "group"

    def run_cases(self, texts: list[str], served: Predictor, labels: list[str], seed: int):
        """The suite's cases and the built-in robustness ones on the test texts, answered by `served`."""
        from components.evaluate.robustness import robustness_cases
        from components.evaluate.suite_runs import run_classifier_cases

        cases = [*(self.suite.cases if self.suite else ()), *robustness_cases(texts, seed)]
        lists = self.suite.lists if self.suite else {}
        return run_classifier_cases(cases, lists, served, labels, self.tests.max_fillings, seed)

    def fairness_of(self, splits: dict, labels: list[str], predicted: np.ndarray, min_size: int, seed: int):
        """Fairlearn's report on the test split's groups, when stage 1 kept a group column; else None."""
        from components.evaluate.fairness import group_fairness, positive_labels_of

        test = splits["test"]
        if "group" not in test:
            return None
        return group_fairness(
            test["label"].tolist(),
            [labels[i] for i in predicted],
            test["group"].fillna("(none)").astype(str).tolist(),
            self.group_column,
            positive_labels_of(
                labels, splits["train"]["label"].value_counts().to_dict(), self.fairness.positive_labels
            ),
            min_size,
            self.fairness.resamples,
            seed,
        )


def evaluate(
    model_dir: str,
    data_dir: str,
    max_length: int,
    batch_size: int,
    device: str,
    precision: str,
    seed: int,
    min_slice_size: int,
    champion: tuple[str, Predictor] | None = None,
    top_mistakes: int = 20,
    behaviour: Behaviour | None = None,
) -> Evaluation:
    """Stage 5's findings: test metrics with bootstrap intervals, temperature scaling fitted on the validation
    split, the linear baseline, the paired comparison with the champion (version, predictor), slices, robustness,
    the test cases and fairness between groups (`behaviour`), and the most confident mistakes."""
    from components.evaluate.baseline import baseline_probabilities
    from components.evaluate.robustness import robustness
    from components.evaluate.slices import slice_metrics, worst_slice
    from components.statistics import bootstrap_intervals, calibrate, compare_paired, reliability

    labels = read_manifest(data_dir).labels
    splits = {name: read_split(data_dir, name) for name in SPLITS}
    targets = {name: class_indices(rows, labels) for name, rows in splits.items()}
    texts = splits["test"]["text"].tolist()
    logits_of = load_logits_predictor(model_dir, labels, max_length, batch_size, device, precision)
    test_logits = logits_of(texts)
    calibration = calibrate(logits_of(splits["val"]["text"].tolist()), targets["val"])
    raw, served = softmax(test_logits), softmax(test_logits, calibration.temperature)
    truth, metrics = targets["test"], score(served, targets["test"], labels)
    predicted = served.argmax(axis=1)
    (ece_before, bins_before), (ece, bins) = reliability(raw, truth), reliability(served, truth)
    slices = slice_metrics(splits["test"], truth, predicted)
    behaviour, served_by = behaviour or Behaviour(), lambda batch: softmax(logits_of(batch), calibration.temperature)
    return Evaluation(
        labels=labels,
        metrics=metrics,
        loss_before_calibration=cross_entropy(raw, truth),
        intervals=bootstrap_intervals(truth, predicted, len(labels), seed),
        calibration=calibration,
        ece_before=ece_before,
        ece=ece,
        reliability_before=bins_before,
        reliability=bins,
        baseline=score(
            baseline_probabilities(splits["train"]["text"].tolist(), targets["train"], texts, len(labels), seed),
            truth,
            labels,
        ),
        slices=slices,
        worst_slice=worst_slice(slices, min_slice_size),
        robustness=robustness(logits_of, texts, truth, metrics.test_accuracy, seed),
        test_cases=behaviour.run_cases(texts, served_by, labels, seed),
        fairness=behaviour.fairness_of(splits, labels, predicted, min_slice_size, seed),
        mistakes=most_confident_mistakes(texts, truth, served, labels, top_mistakes),
        champion=compare_paired(predicted == truth, champion[1](texts).argmax(axis=1) == truth, champion[0])
        if champion
        else None,
        test_logits=test_logits,
    )


def most_confident_mistakes(
    texts: list[str], truth: np.ndarray, probabilities: np.ndarray, labels: list[str], top: int
) -> pd.DataFrame:
    """The `top` wrong answers given with the highest probability: text, true and predicted label, probability."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != truth)
    wrong = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:top]
    return pd.DataFrame(
        {
            "text": [texts[i] for i in wrong],
            "true": [labels[truth[i]] for i in wrong],
            "predicted": [labels[predicted[i]] for i in wrong],
            "probability": probabilities[wrong, predicted[wrong]].round(4),
        }
    )
