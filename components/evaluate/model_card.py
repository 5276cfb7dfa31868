"""The model card (markdown): what the model is, what it learned from, how well it does, and its limits. One
helper per section; the registry's shortened description keeps whole sections."""

from __future__ import annotations

from components.evaluate.behaviour_card import fairness_section, test_cases_section
from components.evaluate.card_facts import CardFacts
from components.evaluate.model_card_findings import (
    baseline_section,
    calibration_section,
    gate_section,
    metrics_section,
    mistakes_section,
    robustness_section,
    slices_section,
)
from components.handoff import Manifest, ModelSpec


def render_model_card(facts: CardFacts) -> str:
    sections = (
        _model,
        _data,
        _training,
        _sweep,
        metrics_section,
        baseline_section,
        calibration_section,
        slices_section,
        robustness_section,
        _test_cases,
        _fairness,
        mistakes_section,
        gate_section,
        _intended_use,
        _limitations,
        _ethics,
    )
    texts = (section(facts).strip() for section in sections)
    return _title(facts) + "".join(f"\n## {text}\n" for text in texts if text)


def _test_cases(f: CardFacts) -> str:
    return test_cases_section(f.found.test_cases, f.data_meta.get("test_cases"))


def _fairness(f: CardFacts) -> str:
    return fairness_section(f.found.fairness)


def _title(f: CardFacts) -> str:
    return (
        f"# Model card: {f.name}\n\nA text classifier for the labels "
        f"{', '.join(f'`{label}`' for label in f.spec.labels)}, fine-tuned from `{f.spec.base}`\n"
        f"({f.spec.architecture}, {f.spec.total_parameters:,} parameters).\n"
    )


def _model(f: CardFacts) -> str:
    spec = f.spec
    kind = "decoder, last-token pooling" if spec.is_decoder else "encoder"
    return f"""Model
- Base model: `{spec.base}` (loaded from `{spec.source}`), {kind}.
- Fine-tuning strategy: **{spec.strategy}**{_strategy_detail(spec)}; {spec.trainable_parameters:,} of
  {spec.total_parameters:,} parameters trained ({spec.trainable_parameters / spec.total_parameters:.1%}).
- Saved as safetensors with its tokenizer and label map{_saved_as(spec)}."""


def _data(f: CardFacts) -> str:
    data, meta, labels = f.manifest, f.data_meta, f.spec.labels
    counts = "\n".join(
        f"| {split} | " + " | ".join(str(c.get(label, 0)) for label in labels) + f" | {sum(c.values())} |"
        for split, c in data.counts.items()
    )
    leaking = data.dropped_leaking_texts
    leakage = (
        (
            "\n- Leakage: "
            + " and ".join(f"{n} texts of {split}" for split, n in leaking.items())
            + " that an earlier split also holds were dropped (data.on_leakage=drop)."
        )
        if leaking
        else ""
    )
    damaged = (
        (
            f"\n- Damaged input: {data.skipped_records} records (not JSON, not in the file's encoding, or with "
            f"the wrong number of fields) and {data.skipped_files} unreadable feedback files skipped; the "
            f"validation report names them."
        )
        if data.skipped_records or data.skipped_files
        else ""
    )
    controls = (
        f"{data.stripped_control_characters} texts held control characters (NUL and other C0 controls "
        f"but tab and newline), stripped"
        if data.control_characters == "strip"
        else "texts holding control characters are refused"
    )
    return f"""Data
- Data set: {meta["name"]} — source `{data.source}` (sha256 `{data.source_sha256}`).
- Licence: {meta["licence"]}.{f" Cite: {meta['citation']}" if meta["citation"] else ""}
- Cleaning: texts stripped; {data.dropped_duplicates} exact duplicate rows and
  {data.dropped_conflicting_texts} texts seen with conflicting labels dropped; {controls}
  (data.control_characters={data.control_characters}). Splits fingerprint `{data.fingerprint}`.{leakage}{damaged}

| split | {" | ".join(labels)} | total |
|---|{"---|" * len(labels)}---|
{counts}{_personal_data_table(data)}"""


def _personal_data_table(data: Manifest) -> str:
    """Texts holding each kind of personal data, per split (none found: no table)."""
    kinds = sorted({kind for found in data.pii_found.values() for kind in found})
    if not kinds:
        return ""
    rows = "\n".join(
        f"| {split} | " + " | ".join(str(found.get(kind, 0)) for kind in kinds) + f" | {data.pii_texts.get(split, 0)} |"
        for split, found in data.pii_found.items()
    )
    return (
        f"\n\nPersonal data (texts holding each kind; data.pii={data.pii}):\n\n| split | {' | '.join(kinds)} "
        f"| any |\n|---|{'---|' * len(kinds)}---|\n{rows}"
    )


def _training(f: CardFacts) -> str:
    training, env = f.training, f.environment
    hp = training.hyperparameters
    dropout = "as in the base model" if hp["dropout"] is None else f"{hp['dropout']:g}"
    stopped = ", stopped early" if training.stopped_early else ""
    return f"""Training set-up
- {training.epochs_run} epochs run (best epoch {training.best_epoch}{stopped}),
  {training.train_seconds:.0f} s, {training.samples_per_second:.1f} samples/s.
- Batch size {hp["batch_size"]}, AdamW lr {hp["learning_rate"]:g}, weight decay {hp["weight_decay"]:g},
  warm-up {hp["warmup_ratio"]:.0%} then linear decay, gradient clipping {hp["max_grad_norm"]:g},
  max length {hp["max_length"]} tokens, dropout {dropout}.
- Device {env.device}, precision {env.precision}, {env.threads} CPU threads, seed {env.seed}.
- torch {env.libraries["torch"]}, transformers {env.libraries["transformers"]}, peft {env.libraries["peft"]}."""


def _sweep(f: CardFacts) -> str:
    """How the hyper-parameters were chosen, when a sweep chose them; empty (no section) otherwise."""
    if not f.sweep:
        return ""
    from components.sweep.space import params_text

    sweep = f.sweep
    defaults = (
        f" The config's own values (trial {sweep['defaults_trial']}) reached {sweep['defaults_val_loss']:.4f}."
        if sweep.get("defaults_val_loss") is not None
        else ""
    )
    return f"""Hyper-parameter search
- These settings came from a sweep (Optuna study `{sweep["study"]}`): {sweep["trials"]} configurations tried
  ({sweep["complete"]} complete, {sweep["pruned"]} pruned on their validation loss, {sweep["failed"]} failed) over
  {", ".join(f"`{key}`" for key in sweep["space"])}.
- Trial {sweep["winner"]} won with the lowest validation loss, {sweep["best_val_loss"]:.4f}:
  `{params_text(sweep["winner_params"])}`.{defaults}
- The search saw the train and validation splits only; the test figures below are its first look at the test split.
  With {sweep["trials"]} configurations compared on {sum(f.manifest.counts["val"].values())} validation texts, the
  winner's validation loss is optimistic: a wide search can overfit validation."""


def _intended_use(f: CardFacts) -> str:
    return f"""Intended use
Sorting short texts like those of the training data into {", ".join(f.spec.labels)}, as a filter or a triage aid whose
decisions a person can review. Not for texts in other languages, domains or eras than the training data without
evaluating it there first."""


def _limitations(f: CardFacts) -> str:
    metrics, (low, high) = f.found.metrics, f.found.intervals["accuracy"]
    balance = {
        "undersample": " was forced by undersampling",
        "oversample": " was forced by oversampling the train split (its smaller classes' texts repeated)",
    }.get(f.data_meta.get("balance"), " follows the data")
    return f"""Limitations
- Measured on {metrics.test_size} held-out texts from the same source as the training data: the figures above do not
  carry over to other sources, and at this size the 95% interval of accuracy spans
  {100 * (high - low):.1f} points.
- Class balance in training{balance}; real
  traffic may have another mix, which shifts precision per class.
- Texts longer than {f.training.hyperparameters["max_length"]} tokens are truncated."""


def _ethics(f: CardFacts) -> str:
    group_column = f.data_meta.get("group_column")
    groups = (
        " and by " + group_column
        if group_column
        else "; name a column of groups (language, channel) as data.group_column to see errors per group"
    )
    return f"""Ethical considerations
- Bias: the data reflects the people, places and period it was collected from; the model may treat dialects,
  slang or non-native writing differently. The slices above show errors by length and source{groups}.
- Privacy: {_personal_data(f)}
  {_private_training(f)} Do not publish the model's inputs or predictions, and keep served texts only as long as
  monitoring needs them.
- A wrong label has a cost (a lost legitimate message, a missed harmful one): keep a person in the loop where
  that cost is high."""


def _personal_data(f: CardFacts) -> str:
    """What stage 1 looked for, found and did (data.pii), in a sentence or two."""
    data = f.manifest
    if not data.pii_entities:  # a manifest from before personal data was looked for
        return "the training texts were not checked for personal data."
    found = {}
    for kinds in data.pii_found.values():
        for kind, n in kinds.items():
            found[kind] = found.get(kind, 0) + n
    names = "" if "PERSON" in data.pii_entities else " (names not checked: no pii.spacy_model)"
    listed = ", ".join(f"{n} {kind}" for kind, n in sorted(found.items())) or "none"
    done = {
        "redact": "each replaced by its typed placeholder (<PHONE_NUMBER>) before training",
        "report": "trained on as they are (data.pii=report)",
    }.get(data.pii, "")
    return (
        f"the texts were checked for {', '.join(data.pii_entities)}{names}; texts holding each kind: "
        f"{listed}{'; ' + done if found and done else ''}."
    )


def _private_training(f: CardFacts) -> str:
    privacy = f.training.hyperparameters.get("privacy")
    if not privacy:
        return "Trained without differential privacy (train.privacy unset)."
    return (
        f"Trained with differential privacy (DP-SGD, Opacus): ε = {f.training.epsilon_spent:.2f} spent of the "
        f"target {privacy['epsilon']:g}, δ = {privacy['delta']:g}, per-text gradients clipped to "
        f"{privacy['max_grad_norm']:g}."
    )


MERGED = {
    "lora": "; LoRA weights merged into the base",
    "qlora": "; trained on a 4-bit NF4 base, LoRA weights merged into the full-precision base",
    "adapter": "; the bottleneck adapters saved beside the base's weights",
}


def _strategy_detail(spec: ModelSpec) -> str:
    modules = ", ".join(spec.adapted_modules or [])
    if spec.strategy == "partial":
        return f" (last {spec.trainable_blocks} blocks, final norm and head)"
    if spec.strategy in ("lora", "qlora"):
        return f" (LoRA on {modules}, plus the head)"
    if spec.strategy == "peft":
        return f" ({spec.peft_method}" + (f" on {modules}" if modules else "") + ", plus the head)"
    if spec.strategy == "adapter":
        return f" (bottleneck adapters after {modules} in every block, plus the head)"
    if spec.strategy == "head":
        return " (head only)"
    return ""


def _saved_as(spec: ModelSpec) -> str:
    if spec.strategy == "peft":
        return (
            f"; {spec.peft_method} merged into the base"
            if spec.merged_into_base
            else f"; {spec.peft_method}'s adapter saved beside the base's weights (the method cannot merge)"
        )
    return MERGED.get(spec.strategy, "")
