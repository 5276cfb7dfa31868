"""What the model card tells, gathered in one record: the stages' hand-offs, the data's description and stage 5's
findings (model_card.py and model_card_findings.py render it)."""

from __future__ import annotations

from dataclasses import dataclass

from components.evaluate.core import Evaluation, GateDecision
from components.handoff import Environment, Manifest, ModelSpec, TrainResult


@dataclass
class CardFacts:
    """Everything the card tells: the stages' hand-offs, the data's description and stage 5's findings."""

    name: str  # the registered model
    spec: ModelSpec
    manifest: Manifest
    data_meta: dict  # name, licence, citation, balance, group_column (the data config); test_cases (the file)
    environment: Environment
    training: TrainResult
    found: Evaluation
    gate: GateDecision
    sweep: dict | None = None  # handoff.SWEEP_ACCOUNT, when the model won a sweep (lifecycle tune)


def common_tags(facts) -> dict[str, str]:
    """What every registered version is tagged with, whatever its task: the gate and what the model is."""
    return {
        "gate": "passed" if facts.gate.passed else "failed",
        "gate_reasons": "; ".join(facts.gate.reasons),
        "data_fingerprint": facts.manifest.fingerprint,
        "strategy": facts.spec.strategy,
        "base_model": facts.spec.base,
    }
