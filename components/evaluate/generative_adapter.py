"""Stage 5's MLflow adapter for task=generation: the nested run `5-evaluate` with the perplexities, text scores and
test-case pass rates (the base model's beside the model's), the tables of generations, test-case failures and
highest losses, the training curves and the model card; the model registered as the challenger when it passed the
gate, the verdict in gate.json."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from components.config import LifecycleConfig
from components.stages import EVALUATE

PROMPT_FORMAT = "prompt_format.json"  # the generation section's rendering keys, registered beside the model
RENDERING = ("chat_template", "prompt_template", "system_prompt", "max_new_tokens")


def evaluate_in_run(
    cfg: LifecycleConfig, tracking_uri: str, parent_run_id: str, data_dir: str, env_dir: str, model_dir: str, out: Path
) -> dict:
    """Stage 5 for a generator in its MLflow run: the findings, the gate, the card and the registration."""
    import tempfile

    import mlflow

    from components.evaluate.generative import Placement, decide_generation_gate, evaluate_generator
    from components.evaluate.suite_runs import gate_checks, read_suite
    from components.handoff import GATE, GateOutcome, read_environment, read_model_spec, write_json
    from components.model.loading import resolve_base
    from components.registry import champion_model_dir
    from components.tracking import stage_run

    env = read_environment(env_dir)
    where = Placement(env.device, env.precision, cfg.train.eval_batch_size, cfg.train.max_batch_tokens)
    with (
        stage_run(tracking_uri, cfg.tracking.experiment, parent_run_id, EVALUATE.run_name) as stage,
        tempfile.TemporaryDirectory(prefix="lifecycle-champion-") as scratch,  # not in the stage's outputs
    ):
        champion = (
            champion_model_dir(cfg.tracking.registered_model, scratch) if cfg.gate.compare_with_champion else None
        )
        found = evaluate_generator(
            model_dir,
            resolve_base(read_model_spec(model_dir).base),
            data_dir,
            cfg.generation,
            cfg.model.max_length,
            where,
            cfg.seed,
            champion,
            cfg.gate.significance,
            read_suite(cfg),
            cfg.test_cases.max_fillings,
        )
        gate = decide_generation_gate(found, cfg.generation, cfg.gate, gate_checks(cfg, found.test_cases))
        version = _card_and_registration(cfg, found, gate, model_dir, data_dir, out)
        stage.result = summary(found, gate, version)
    client = mlflow.MlflowClient()
    for key, value in found.scalars().items():
        client.log_metric(parent_run_id, key, value)
    client.set_tag(parent_run_id, "gate", "passed" if gate.passed else "failed")
    client.set_tag(parent_run_id, "model_version", version)
    write_json(out, GATE, asdict(GateOutcome(gate.passed, gate.reasons, version)))
    return {
        "gate_passed": gate.passed,
        "gate_reasons": gate.reasons,
        "model_version": version,
        "metrics": found.scalars(),
    }


def _card_and_registration(cfg: LifecycleConfig, found, gate, model_dir: str, data_dir: str, out: Path) -> str:
    """The card, figures, metrics and tables logged in the active run; the model registered with the card and
    the gate's tags. Returns the version."""
    import mlflow

    from components.evaluate.generative_card import GenerativeCardFacts, render_generative_card
    from components.evaluate.plots import plot_curves
    from components.handoff import (
        METRICS,
        MODEL_CARD,
        VALIDATION_REPORT,
        read_manifest,
        read_model_spec,
        read_train_result,
    )
    from components.registry import register_generator

    rendering = cfg.generation.model_dump(include=set(RENDERING))
    (out / PROMPT_FORMAT).write_text(json.dumps(rendering))
    manifest, training = read_manifest(data_dir), read_train_result(model_dir)
    facts = GenerativeCardFacts(
        cfg.tracking.registered_model,
        read_model_spec(model_dir),
        manifest,
        cfg.data.model_dump(include={"name", "licence", "citation"}) | {"test_cases": cfg.test_cases.path},
        json.loads((Path(data_dir) / VALIDATION_REPORT).read_text())["sources"],
        training,
        found,
        gate,
        rendering | {"train_on_prompt": cfg.generation.train_on_prompt},
    )
    card = render_generative_card(facts)
    (out / MODEL_CARD).write_text(card)
    plot_curves(training.history, out / "training_curves.png")
    (out / METRICS).write_text(json.dumps(found.scalars() | {"gate": gate.__dict__}, indent=2))
    mlflow.log_metrics(found.scalars())
    for name in ("training_curves.png", MODEL_CARD, METRICS, PROMPT_FORMAT):
        mlflow.log_artifact(str(out / name))
    for name, table in found.tables().items():
        mlflow.log_table(table, f"evaluation/{name}.json")
    tags = _version_tags(facts)
    version = register_generator(
        cfg.tracking.registered_model,
        model_dir,
        str(out / PROMPT_FORMAT),
        cfg.generation.max_new_tokens,
        card,
        tags,
        gate.passed,
    )
    mlflow.set_tags({"gate": tags["gate"], "model_version": version})
    return version


def _version_tags(facts) -> dict[str, str]:
    """The registered version's tags: the gate, what the model is, its perplexities, the champion it was judged
    against."""
    from components.evaluate.card_facts import common_tags

    return common_tags(facts) | {
        "test_perplexity": f"{facts.found.model.perplexity:.4f}",
        "base_test_perplexity": f"{facts.found.base.perplexity:.4f}",
        "champion_version": facts.found.champion.champion_version if facts.found.champion else "none",
    }


def summary(found, gate, version: str) -> str:
    """The stage's closing line."""
    model, base = found.model, found.base
    low, high = model.perplexity_interval
    cases = f", test cases {found.test_cases.pass_rate:.0%} passed" if found.test_cases is not None else ""
    rouge = f", ROUGE-L {model.scores['rouge_l']:.3f} (base {base.scores['rouge_l']:.3f})" if model.scores else ""
    return (
        f"test perplexity {model.perplexity:.3f} (95% CI {low:.3f}-{high:.3f}; base model {base.perplexity:.3f})"
        f"{rouge}{cases}; gate "
        f"{'passed' if gate.passed else 'failed'} ({'; '.join(gate.reasons)}); version {version}"
        + (" is the challenger" if gate.passed else "")
    )
