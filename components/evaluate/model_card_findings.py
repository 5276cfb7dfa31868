"""The model card's sections on stage 5's findings: the test metrics with their intervals, the baseline,
calibration, slices, robustness, the most confident mistakes and the gate."""

from __future__ import annotations

from components.evaluate.card_facts import CardFacts


def metrics_section(f: CardFacts) -> str:
    metrics, found = f.found.metrics, f.found
    (acc_low, acc_high), (f1_low, f1_high) = found.intervals["accuracy"], found.intervals["macro_f1"]
    auc = f"{metrics.test_roc_auc:.4f}" if metrics.test_roc_auc is not None else "n/a (more than two classes)"
    per_class = "\n".join(
        f"| {label} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |"
        for label, m in metrics.per_class.items()
    )
    return f"""Metrics (test split, {metrics.test_size} texts)
| metric | value | 95% interval (bootstrap) |
|---|---|---|
| accuracy | {metrics.test_accuracy:.4f} | {acc_low:.4f} – {acc_high:.4f} |
| macro F1 | {metrics.test_macro_f1:.4f} | {f1_low:.4f} – {f1_high:.4f} |
| cross-entropy | {metrics.test_loss:.4f} (before calibration {found.loss_before_calibration:.4f}) | |
| macro precision | {metrics.test_macro_precision:.4f} | |
| macro recall | {metrics.test_macro_recall:.4f} | |
| ROC-AUC | {auc} | |

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{per_class}"""


def baseline_section(f: CardFacts) -> str:
    baseline, accuracy = f.found.baseline, f.found.metrics.test_accuracy
    return f"""Against a linear baseline
TF-IDF of word 1–2-grams and character 2–5-grams with logistic regression, trained on the same train split:
test accuracy {baseline.test_accuracy:.4f}, macro F1 {baseline.test_macro_f1:.4f}. Fine-tuning gained
**{100 * (accuracy - baseline.test_accuracy):+.2f} points** of accuracy over it."""


def calibration_section(f: CardFacts) -> str:
    found, calibration = f.found, f.found.calibration
    decision = (
        f"kept in the served model: it lowered the validation cross-entropy from "
        f"{calibration.val_loss_before:.4f} to {calibration.val_loss_after:.4f}"
        if calibration.kept
        else f"not kept: it did not lower the validation cross-entropy ({calibration.val_loss_before:.4f})"
    )
    return (
        "Calibration\n"
        f"Expected calibration error (10 confidence bins) on the test split: {found.ece_before:.4f} as trained, "
        f"{found.ece:.4f} as served. Temperature scaling fitted on the validation split gave T = "
        f"{calibration.fitted_temperature:.3f}, {decision}. The reliability diagram is `reliability_diagram.png`."
    )


def slices_section(f: CardFacts) -> str:
    found, group_column = f.found, f.data_meta.get("group_column")
    rows = "\n".join(
        f"| {r['slicing']} | {_slice_name(r)} | {r['size']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} |"
        for r in found.slices
    )
    worst = found.worst_slice
    summary = (
        f"Worst slice: {worst['slicing']} = {_slice_name(worst)}, accuracy {worst['accuracy']:.4f} on "
        f"{worst['size']} texts, {100 * (found.metrics.test_accuracy - worst['accuracy']):.2f} points below "
        f"the whole."
        if worst
        else "No slice is large enough to judge."
    )
    grouping = f" and by `{group_column}`" if group_column else ""
    return (
        f"Slices\nBy text length (the test texts' tertiles), by source (the data or monitoring's feedback)"
        f"{grouping}.\n\n| slicing | slice | texts | accuracy | macro F1 |\n|---|---|---|---|---|\n{rows}\n\n"
        f"{summary}"
    )


def _slice_name(row: dict) -> str:
    return cell(row["slice"]) + (f" ({row['range']})" if row["range"] else "")


def robustness_section(f: CardFacts) -> str:
    unchanged = f.found.test_cases.pass_rate_by_category
    rows = "\n".join(
        f"| {r['perturbation'].replace('_', ' ')} | {r['changed_share']:.0%} | {r['accuracy']:.4f} | "
        f"{100 * r['drop']:+.2f} | "
        + (f"{unchanged[name]:.1%}" if (name := f"robustness/{r['perturbation']}") in unchanged else "-")
        + " |"
        for r in f.found.robustness
    )
    return (
        f"Robustness\nAccuracy on the test texts as real traffic alters them (seeded), against "
        f"{f.found.metrics.test_accuracy:.4f} on the clean texts; and, as invariance tests (test cases "
        f"robustness/<perturbation>), the share of the changed texts whose prediction did not change:\n\n"
        f"| perturbation | texts changed | accuracy | drop (points) | prediction unchanged |\n|---|---|---|---|---|\n"
        f"{rows}"
    )


def mistakes_section(f: CardFacts, shown: int = 5) -> str:
    mistakes = f.found.mistakes
    if mistakes.empty:
        return "Most confident mistakes\nNone: every test text was classified correctly."
    rows = "\n".join(
        f"| {cell(row.text)} | {row.true} | {row.predicted} | {row.probability:.3f} |"
        for row in mistakes.head(shown).itertuples()
    )
    return (
        f"Most confident mistakes\nThe {min(shown, len(mistakes))} most confident of {len(mistakes)} listed in "
        f"MLflow (`evaluation/most_confident_mistakes.json`):\n\n| text | true | predicted | probability |\n"
        f"|---|---|---|---|\n{rows}"
    )


def gate_section(f: CardFacts) -> str:
    return f"Validation gate: {'PASSED' if f.gate.passed else 'FAILED'}\n" + "\n".join(
        f"- {reason}" for reason in f.gate.reasons
    )


def cell(text: str, width: int = 80) -> str:
    """A text as one markdown table cell."""
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= width else flat[: width - 1] + "…"
