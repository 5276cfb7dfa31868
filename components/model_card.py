"""The model card (markdown): what the model is, what it learned from, how well it does, and its limits."""

from __future__ import annotations

from components.evaluation import GateDecision, TestMetrics


def render_model_card(
    name: str,
    spec: dict,
    data: dict,
    data_meta: dict,
    environment: dict,
    training: dict,
    metrics: TestMetrics,
    gate: GateDecision,
) -> str:
    """`spec`: stage 2's model spec; `data`: stage 1's manifest; `data_meta`: name, licence, citation, balance;
    `environment`: stage 3's facts; `training`: stage 4's result."""
    labels = spec["labels"]
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
- Saved as safetensors with its tokenizer and label map{"; LoRA weights merged into the base" if spec['strategy'] == 'lora' else ""}.

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
| metric | value |
|---|---|
| accuracy | {metrics.test_accuracy:.4f} |
| cross-entropy | {metrics.test_loss:.4f} |
| macro precision | {metrics.test_macro_precision:.4f} |
| macro recall | {metrics.test_macro_recall:.4f} |
| macro F1 | {metrics.test_macro_f1:.4f} |
| ROC-AUC | {auc} |

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{per_class}

## Validation gate: {"PASSED" if gate.passed else "FAILED"}
{gate_lines}

## Intended use
Sorting short texts like those of the training data into {", ".join(labels)}, as a filter or a triage aid whose
decisions a person can review. Not for texts in other languages, domains or eras than the training data without
evaluating it there first.

## Limitations
- Measured on {metrics.test_size} held-out texts from the same source as the training data: the figures above do not
  carry over to other sources, and the confidence interval at this size is several tenths of a point.
- Class balance in training{" was forced by undersampling" if data_meta.get('balance') == 'undersample' else " follows the data"}; real
  traffic may have another mix, which shifts precision per class.
- Texts longer than {hp['max_length']} tokens are truncated.

## Ethical considerations
- Bias: the data reflects the people, places and period it was collected from; the model may treat dialects,
  slang or non-native writing differently. Check errors per group before relying on it.
- Privacy: training texts can be personal messages. Do not publish the model's inputs or predictions, and keep
  served texts only as long as monitoring needs them.
- A wrong label has a cost (a lost legitimate message, a missed harmful one): keep a person in the loop where
  that cost is high.
"""


def _strategy_detail(spec: dict) -> str:
    if spec["strategy"] == "partial":
        return f" (last {spec['trainable_blocks']} blocks, final norm and head)"
    if spec["strategy"] == "lora":
        return f" (LoRA on {', '.join(spec['lora_target_modules'] or [])}, plus the head)"
    if spec["strategy"] == "head":
        return " (head only)"
    return ""
