"""The model card of a generative model (markdown): what it is and is for, what it learned from and in which format,
its test perplexity and text scores beside the base model's, the test cases, sample generations, the gate, its
limits and the personal data found. One helper per section, as model_card.py for a classifier."""

from __future__ import annotations

import math
from dataclasses import dataclass

from components.evaluate.behaviour_card import test_cases_section
from components.evaluate.core import GateDecision
from components.handoff import Manifest, ModelSpec, TrainResult

SAMPLES = 5  # sample generations shown


@dataclass
class GenerativeCardFacts:
    name: str  # the registered model
    spec: ModelSpec
    manifest: Manifest
    data_meta: dict  # name, licence, citation, test_cases (the file)
    formats: dict  # the validation report's sources: file -> format, examples
    training: TrainResult
    found: object  # generative.GenerativeEvaluation
    gate: GateDecision
    prompt_format: dict  # how prompts are rendered (chat template or prompt template), the system prompt


def render_generative_card(facts: GenerativeCardFacts) -> str:
    sections = (_model, _intended_use, _data, _metrics, _test_cases, _samples, _gate, _limitations, _personal_data)
    texts = (section(facts).strip() for section in sections)
    spec = facts.spec
    title = (
        f"# Model card: {facts.name}\n\nA text generator (causal LM) fine-tuned from `{spec.base}` "
        f"({spec.architecture}, {spec.total_parameters:,} parameters) to answer prompts as its data does.\n"
    )
    return title + "".join(f"\n## {text}\n" for text in texts if text)


def _model(f: GenerativeCardFacts) -> str:
    spec, rendering = f.spec, f.prompt_format
    prompt = (
        "the tokenizer's chat template"
        if rendering["chat_template"]
        else f"the prompt template `{rendering['prompt_template']!r}`"
    )
    return f"""Model
- Base model: `{spec.base}` (loaded from `{spec.source}`).
- Fine-tuning strategy: **{spec.strategy}**; {spec.trainable_parameters:,} of {spec.total_parameters:,} parameters
  trained ({spec.trainable_parameters / spec.total_parameters:.1%}){_merged(spec)}.
- Prompts are rendered with {prompt}; the loss was on the response tokens
  {"and the prompt tokens" if rendering.get("train_on_prompt") else "only"}, with the end-of-sequence token appended.
- Trained {f.training.epochs_run} epochs (best: {f.training.best_epoch}, validation perplexity
  {math.exp(f.training.best_val_loss):.3f})."""


def _intended_use(f: GenerativeCardFacts) -> str:
    return f"""Intended use
Answering prompts like those of `{f.data_meta.get("name", "the data")}`: the tasks, style and length of its
responses. It is a small model: check its answers before anyone relies on them, and do not use it for advice where
a wrong answer harms (medical, legal, financial)."""


def _data(f: GenerativeCardFacts) -> str:
    counts = ", ".join(f"{split} {sum(c.values()):,}" for split, c in f.manifest.counts.items())
    formats = "; ".join(
        f"`{where}`: {info['format']}, {info['examples']:,} examples" for where, info in f.formats.items()
    )
    leaking = sum(f.manifest.dropped_leaking_texts.values())
    return f"""Data
- {f.data_meta.get("name", "dataset")} ({f.data_meta.get("licence", "unknown")} licence): {formats}.
- Examples per split: {counts}; every example of a prompt is in one split. Dropped {f.manifest.dropped_duplicates}
  duplicate examples{f" and {leaking} examples whose prompt an earlier split holds" if leaking else ""}.
- Fingerprint `{f.manifest.fingerprint}`.{_citation(f.data_meta)}"""


def _metrics(f: GenerativeCardFacts) -> str:
    model, base = f.found.model, f.found.base
    rows = [
        ("perplexity (response tokens)", model.perplexity, base.perplexity),
        ("cross-entropy (response tokens)", model.loss, base.loss),
        ("next-token accuracy", model.losses.accuracy(), base.losses.accuracy()),
        *((f"{name} ({len(f.found.sample)} prompts)", model.scores[name], base.scores[name]) for name in model.scores),
    ]
    table = "\n".join(f"| {name} | {ours:.4f} | {theirs:.4f} |" for name, ours, theirs in rows)
    (low, high), (base_low, base_high) = model.perplexity_interval, base.perplexity_interval
    return f"""Metrics on the test split (greedy decoding)
| metric | this model | base model |
|---|---|---|
{table}

Perplexity 95% bootstrap intervals: this model {low:.3f}-{high:.3f}, the base model {base_low:.3f}-{base_high:.3f}."""


def _test_cases(f: GenerativeCardFacts) -> str:
    return test_cases_section(f.found.test_cases, f.data_meta.get("test_cases"))


def _samples(f: GenerativeCardFacts) -> str:
    rows = f.found.sample.head(SAMPLES)
    if rows.empty:  # plain text (domain fine-tuning) has no prompts to generate for
        return ""
    shown = "\n\n".join(
        f"**Prompt:** {_short(r.prompt)}\n\n**Reference:** {_short(r.reference)}\n\n**This model:** "
        f"{_short(r.generation)}\n\n**Base model:** {_short(r.base_generation)}"
        for r in rows.itertuples()
    )
    return f"Sample generations\n{shown}"


def _gate(f: GenerativeCardFacts) -> str:
    verdict = "passed" if f.gate.passed else "failed"
    return f"Gate\n**{verdict}**:\n" + "\n".join(f"- {reason}" for reason in f.gate.reasons)


def _limitations(f: GenerativeCardFacts) -> str:
    return f"""Limitations
- Greedy decoding of at most a fixed number of new tokens: a longer answer is cut.
- ROUGE-L and chrF compare with one reference; a right answer worded otherwise scores low. The test cases check
  facts a reader can follow, but only the ones written.
- It was trained on examples of at most {f.training.hyperparameters.get("max_length")} tokens (longer ones were
  cut): a longer prompt and answer is beyond what it learned."""


def _personal_data(f: GenerativeCardFacts) -> str:
    m = f.manifest
    if m.pii == "off":
        return "Personal data\nNot looked for (data.pii=off)."
    held = sum(m.pii_texts.values())
    kinds = sorted({kind for split in m.pii_found.values() for kind in split})
    return f"Personal data\n{held} examples hold personal data ({', '.join(kinds) or 'none'})" + (
        ", redacted before training (data.pii=redact)." if m.pii == "redact" else " (data.pii=report)."
    )


def _merged(spec: ModelSpec) -> str:
    return ", merged into the base" if spec.merged_into_base else ""


def _citation(meta: dict) -> str:
    return f"\n- Citation: {meta['citation']}" if meta.get("citation") else ""


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
