"""The model card (markdown): what the model is, what it learned from, how well it does, and its limits."""

from __future__ import annotations

from components.evaluation import Evaluation, GateDecision


def render_model_card(
    name: str,
    spec: dict,
    data: dict,
    data_meta: dict,
    environment: dict,
    training: dict,
    found: Evaluation,
    gate: GateDecision,
) -> str:
    """`spec`: stage 2's model spec; `data`: stage 1's manifest; `data_meta`: name, licence, citation, balance,
    group_column; `environment`: stage 3's facts; `training`: stage 4's result; `found`: stage 5's evaluation."""
    labels, metrics = spec["labels"], found.metrics
    (acc_low, acc_high), (f1_low, f1_high) = found.intervals["accuracy"], found.intervals["macro_f1"]
    hp = environment["hyperparameters"]
    per_class = "\n".join(
        f"| {label} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |"
        for label, m in metrics.per_class.items()
    )
    counts = "\n".join(
        f"| {split} | " + " | ".join(str(c.get(label, 0)) for label in labels) + f" | {sum(c.values())} |"
        for split, c in data["counts"].items()
    )
    auc = f"{metrics.test_roc_auc:.4f}" if metrics.test_roc_auc is not None else "n/a (more than two classes)"
    gate_lines = "\n".join(f"- {reason}" for reason in gate.reasons)
    leaking = data.get("dropped_leaking_texts") or {}
    leakage = ("\n- Leakage: " + " and ".join(f"{n} texts of {split}" for split, n in leaking.items())
               + " that an earlier split also holds were dropped (data.on_leakage=drop).") if leaking else ""
    return f"""# Model card: {name}

A text classifier for the labels {", ".join(f"`{label}`" for label in labels)}, fine-tuned from `{spec['base']}`
({spec['architecture']}, {spec['total_parameters']:,} parameters).

## Model
- Base model: `{spec['base']}` (loaded from `{spec['source']}`), {"decoder, last-token pooling" if spec['is_decoder'] else "encoder"}.
- Fine-tuning strategy: **{spec['strategy']}**{_strategy_detail(spec)}; {spec['trainable_parameters']:,} of
  {spec['total_parameters']:,} parameters trained ({spec['trainable_parameters'] / spec['total_parameters']:.1%}).
- Saved as safetensors with its tokenizer and label map{MERGED.get(spec['strategy'], "")}.

## Data
- Data set: {data_meta['name']} — source `{data['source']}` (sha256 `{data['source_sha256']}`).
- Licence: {data_meta['licence']}.{f" Cite: {data_meta['citation']}" if data_meta['citation'] else ""}
- Cleaning: texts stripped; {data['dropped_duplicates']} exact duplicate rows and
  {data['dropped_conflicting_texts']} texts seen with conflicting labels dropped. Splits fingerprint `{data['fingerprint']}`.{leakage}

| split | {" | ".join(labels)} | total |
|---|{"---|" * len(labels)}---|
{counts}

## Training set-up
- {training['epochs_run']} epochs run (best epoch {training['best_epoch']}{", stopped early" if training['stopped_early'] else ""}),
  {training['train_seconds']:.0f} s, {training['samples_per_second']:.1f} samples/s.
- Batch size {hp['batch_size']}, AdamW lr {hp['learning_rate']:g}, weight decay {hp['weight_decay']:g},
  warm-up {hp['warmup_ratio']:.0%} then linear decay, gradient clipping {hp['max_grad_norm']:g}, max length {hp['max_length']} tokens,
  dropout {"as in the base model" if hp['dropout'] is None else f"{hp['dropout']:g}"}.
- Device {environment['device']}, precision {environment['precision']}, {environment['threads']} CPU threads, seed {environment['seed']}.
- torch {environment['libraries']['torch']}, transformers {environment['libraries']['transformers']}, peft {environment['libraries']['peft']}.

## Metrics (test split, {metrics.test_size} texts)
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
{per_class}

## Against a linear baseline
TF-IDF of word 1–2-grams and character 2–5-grams with logistic regression, trained on the same train split:
test accuracy {found.baseline.test_accuracy:.4f}, macro F1 {found.baseline.test_macro_f1:.4f}. Fine-tuning gained
**{100 * (metrics.test_accuracy - found.baseline.test_accuracy):+.2f} points** of accuracy over it.

## Calibration
{_calibration(found)}

## Slices
{_slices(found, data_meta.get("group_column"))}

## Robustness
Accuracy on the test texts as real traffic alters them (seeded), against {metrics.test_accuracy:.4f} on the clean texts:

| perturbation | texts changed | accuracy | drop (points) |
|---|---|---|---|
{_robustness(found)}

## Most confident mistakes
{_mistakes(found)}

## Validation gate: {"PASSED" if gate.passed else "FAILED"}
{gate_lines}

## Intended use
Sorting short texts like those of the training data into {", ".join(labels)}, as a filter or a triage aid whose
decisions a person can review. Not for texts in other languages, domains or eras than the training data without
evaluating it there first.

## Limitations
- Measured on {metrics.test_size} held-out texts from the same source as the training data: the figures above do not
  carry over to other sources, and at this size the 95% interval of accuracy spans
  {100 * (acc_high - acc_low):.1f} points.
- Class balance in training{" was forced by undersampling" if data_meta.get('balance') == 'undersample' else " follows the data"}; real
  traffic may have another mix, which shifts precision per class.
- Texts longer than {hp['max_length']} tokens are truncated.

## Ethical considerations
- Bias: the data reflects the people, places and period it was collected from; the model may treat dialects,
  slang or non-native writing differently. The slices above show errors by length and source{
  " and by " + data_meta["group_column"] if data_meta.get("group_column") else
  "; name a column of groups (language, channel) as data.group_column to see errors per group"}.
- Privacy: training texts can be personal messages. Do not publish the model's inputs or predictions, and keep
  served texts only as long as monitoring needs them.
- A wrong label has a cost (a lost legitimate message, a missed harmful one): keep a person in the loop where
  that cost is high.
"""


def _calibration(found: Evaluation) -> str:
    calibration = found.calibration
    decision = (f"kept in the served model: it lowered the validation cross-entropy from "
                f"{calibration.val_loss_before:.4f} to {calibration.val_loss_after:.4f}" if calibration.kept else
                f"not kept: it did not lower the validation cross-entropy ({calibration.val_loss_before:.4f})")
    return (f"Expected calibration error (10 confidence bins) on the test split: {found.ece_before:.4f} as trained, "
            f"{found.ece:.4f} as served. Temperature scaling fitted on the validation split gave T = "
            f"{calibration.fitted_temperature:.3f}, {decision}. The reliability diagram is `reliability_diagram.png`.")


def _slices(found: Evaluation, group_column: str | None) -> str:
    rows = "\n".join(f"| {r['slicing']} | {_slice_name(r)} | {r['size']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} |"
                     for r in found.slices)
    worst = found.worst_slice
    summary = (f"Worst slice: {worst['slicing']} = {_slice_name(worst)}, accuracy {worst['accuracy']:.4f} on "
               f"{worst['size']} texts, {100 * (found.metrics.test_accuracy - worst['accuracy']):.2f} points below "
               f"the whole." if worst else "No slice is large enough to judge.")
    grouping = f" and by `{group_column}`" if group_column else ""
    return (f"By text length (the test texts' tertiles), by source (the data or monitoring's feedback){grouping}.\n\n"
            f"| slicing | slice | texts | accuracy | macro F1 |\n|---|---|---|---|---|\n{rows}\n\n{summary}")


def _slice_name(row: dict) -> str:
    return _cell(row["slice"]) + (f" ({row['range']})" if row["range"] else "")


def _robustness(found: Evaluation) -> str:
    return "\n".join(f"| {r['perturbation'].replace('_', ' ')} | {r['changed_share']:.0%} | {r['accuracy']:.4f} | "
                     f"{100 * r['drop']:+.2f} |" for r in found.robustness)


def _mistakes(found: Evaluation, shown: int = 5) -> str:
    if found.mistakes.empty:
        return "None: every test text was classified correctly."
    rows = "\n".join(f"| {_cell(row.text)} | {row.true} | {row.predicted} | {row.probability:.3f} |"
                     for row in found.mistakes.head(shown).itertuples())
    return (f"The {min(shown, len(found.mistakes))} most confident of {len(found.mistakes)} listed in MLflow "
            f"(`evaluation/most_confident_mistakes.json`):\n\n| text | true | predicted | probability |\n"
            f"|---|---|---|---|\n{rows}")


def _cell(text: str, width: int = 80) -> str:
    """A text as one markdown table cell."""
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= width else flat[:width - 1] + "…"


MERGED = {"lora": "; LoRA weights merged into the base",
          "qlora": "; trained on a 4-bit NF4 base, LoRA weights merged into the full-precision base"}


def _strategy_detail(spec: dict) -> str:
    if spec["strategy"] == "partial":
        return f" (last {spec['trainable_blocks']} blocks, final norm and head)"
    if spec["strategy"] in ("lora", "qlora"):
        return f" (LoRA on {', '.join(spec['lora_target_modules'] or [])}, plus the head)"
    if spec["strategy"] == "head":
        return " (head only)"
    return ""
