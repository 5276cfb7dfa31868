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
    data_meta: dict  # name, licence, citation, balance, group_column (the data config)
    environment: Environment
    training: TrainResult
    found: Evaluation
    gate: GateDecision
    sweep: dict | None = None  # handoff.SWEEP_ACCOUNT, when the model won a sweep (lifecycle tune)
