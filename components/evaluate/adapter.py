"""Stage 5's MLflow adapter: the nested run `5-evaluate` with the metrics, figures, tables and the model card;
the model registered as the challenger when it passed the gate (components.registry), the verdict in gate.json."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from components.config import LifecycleConfig
from components.stages import EVALUATE

FIGURES = ("confusion_matrix.png", "training_curves.png", "reliability_diagram.png")


def evaluate(
    config_json: str, tracking_uri: str, parent_run_id: str, data_dir: str, env_dir: str, model_dir: str, out_dir: str
) -> dict:
    from components.evaluate import core
    from components.evaluate.suite_runs import gate_checks, read_suite
    from components.handoff import GATE, GateOutcome, read_environment, read_manifest, write_json, write_test_logits
    from components.registry import champion_predictor
    from components.tracking import stage_run

    cfg = LifecycleConfig.model_validate_json(config_json)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.task == "generation":
        from components.evaluate.generative_adapter import evaluate_in_run

        return evaluate_in_run(cfg, tracking_uri, parent_run_id, data_dir, env_dir, model_dir, out)
    env, manifest = read_environment(env_dir), read_manifest(data_dir)
    with stage_run(tracking_uri, cfg.tracking.experiment, parent_run_id, EVALUATE.run_name) as stage:
        champion = (
            champion_predictor(cfg.tracking.registered_model, manifest.labels)
            if cfg.gate.compare_with_champion
            else None
        )
        found = core.evaluate(
            model_dir,
            data_dir,
            cfg.model.max_length,
            cfg.train.eval_batch_size,
            env.device,
            env.precision,
            cfg.seed,
            cfg.gate.min_slice_size,
            champion,
            behaviour=core.Behaviour(
                read_suite(cfg, manifest.labels), cfg.test_cases, cfg.fairness, cfg.data.group_column or "group"
            ),
        )
        write_test_logits(out, found.test_logits, env.device, env.precision, cfg.model.max_length)
        checks = gate_checks(cfg, found.test_cases, found.fairness)
        gate = core.decide_gate(found.metrics, cfg.gate, found.champion, found.baseline, found.worst_slice, checks)
        facts = _card_facts(cfg, model_dir, manifest, env, found, gate)
        tags, version = _card_and_registration(facts, champion[0] if champion else None, model_dir, data_dir, out)
        stage.result = summary(found, gate, version)
    _log_on_parent(parent_run_id, found, tags, version)
    write_json(out, GATE, asdict(GateOutcome(gate.passed, gate.reasons, version)))
    return {
        "gate_passed": gate.passed,
        "gate_reasons": gate.reasons,
        "model_version": version,
        "metrics": found.metrics.scalars(),
        "confusion": found.metrics.confusion,
        "labels": manifest.labels,
    }


def _card_facts(cfg: LifecycleConfig, model_dir: str, manifest, env, found, gate):
    """What the model card tells: the hand-offs of stages 1-4, the data's description and stage 5's findings."""
    from components.evaluate.card_facts import CardFacts
    from components.handoff import read_model_spec, read_sweep, read_train_result

    return CardFacts(
        cfg.tracking.registered_model,
        read_model_spec(model_dir),
        manifest,
        cfg.data.model_dump(include={"name", "licence", "citation", "balance", "group_column"})
        | {"test_cases": cfg.test_cases.path},
        env,
        read_train_result(model_dir),
        found,
        gate,
        read_sweep(model_dir),
    )


def _card_and_registration(facts, champion_version, model_dir: str, data_dir: str, out: Path) -> tuple[dict, str]:
    """The model card written and logged with the findings; the model registered with the card and the gate's
    tags. Returns (the tags, the registered version)."""
    import mlflow

    from components.evaluate.model_card import render_model_card
    from components.handoff import MODEL_CARD, read_texts
    from components.registry import register_challenger

    card = render_model_card(facts)
    (out / MODEL_CARD).write_text(card)
    _log_findings(facts, out)
    tags = version_tags(facts, champion_version)
    version = register_challenger(
        facts.name, model_dir, facts.manifest.labels, card, tags, read_texts(data_dir, "test", 3), facts.gate.passed
    )
    mlflow.set_tags({"gate": tags["gate"], "model_version": version})
    return tags, version


def _log_findings(facts, out: Path) -> None:
    """The figures, the card, the metrics and the tables, in the active run."""
    import json

    import mlflow

    from components.evaluate.plots import plot_confusion, plot_curves, plot_reliability
    from components.handoff import METRICS, MODEL_CARD

    found = facts.found
    plot_confusion(found.metrics, found.labels, out / FIGURES[0])
    plot_curves(facts.training.history, out / FIGURES[1])
    plot_reliability(found.reliability_before, found.reliability, found.calibration.temperature, out / FIGURES[2])
    (out / METRICS).write_text(json.dumps(found.to_dict() | {"gate": facts.gate.__dict__}, indent=2))
    mlflow.log_metrics(found.scalars())
    for name in (*FIGURES, MODEL_CARD, METRICS):
        mlflow.log_artifact(str(out / name))
    for name, table in found.tables().items():
        mlflow.log_table(table, f"evaluation/{name}.json")


def version_tags(facts, champion_version: str | None) -> dict[str, str]:
    """The registered version's tags: the gate, what the model is, its key metrics, the calibration stage 6
    serves."""
    from components.evaluate.card_facts import common_tags
    from components.handoff import TEMPERATURE_TAG

    metrics = facts.found.metrics
    return (
        common_tags(facts)
        | {
            "test_accuracy": f"{metrics.test_accuracy:.4f}",
            "test_loss": f"{metrics.test_loss:.4f}",
            "champion_version": champion_version or "none",
            TEMPERATURE_TAG: f"{facts.found.calibration.temperature:.6g}",
        }
        | (
            {"sweep": f"trial {facts.sweep['winner']} of {facts.sweep['trials']} ({facts.sweep['study']})"}
            if facts.sweep
            else {}
        )
    )


def summary(found, gate, version: str) -> str:
    """The stage's closing line."""
    metrics, (low, high) = found.metrics, found.intervals["accuracy"]
    rate = found.test_cases.pass_rate
    return (
        f"test accuracy {metrics.test_accuracy:.2%} (95% CI {low:.2%}-{high:.2%}; baseline "
        f"{found.baseline.test_accuracy:.2%}), macro-F1 {metrics.test_macro_f1:.4f}, cross-entropy "
        f"{metrics.test_loss:.4f}"
        + (f", test cases {rate:.0%} passed" if rate is not None else "")
        + f"; gate {'passed' if gate.passed else 'failed'} ({'; '.join(gate.reasons)}); version {version}"
        + (" is the challenger" if gate.passed else "")
    )


def _log_on_parent(parent_run_id: str, found, tags: dict, version: str) -> None:
    """What users compare across runs, on the parent run too."""
    import mlflow

    client = mlflow.MlflowClient()
    for key, value in found.metrics.scalars().items():
        client.log_metric(parent_run_id, key, value)
    for key in ("gate", "gate_reasons"):
        client.set_tag(parent_run_id, key, tags[key])
    client.set_tag(parent_run_id, "model_version", version)
