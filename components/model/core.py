"""Stage 2, model initialisation: a pretrained encoder or decoder with a new classification head, or a causal LM as
it is (task=generation), saved with the spec of which of its parameters train under the chosen strategy
(components/model/strategies.py)."""

from __future__ import annotations

from pathlib import Path

from components.config import ModelConfig
from components.handoff import MODEL_SPEC, ModelSpec, write_json
from components.model.blocks import count_parameters, is_decoder
from components.model.loading import load_model, resolve_base
from components.model.strategies import apply_strategy, spec_as_trained


def model(model_cfg: ModelConfig, labels: list[str] | None, seed: int, out_dir) -> ModelSpec:
    """Stage 2: save the base model with its new head (seeded; none for a causal LM, labels None) and the spec of
    what trains."""
    import torch

    source = resolve_base(model_cfg.base)
    torch.manual_seed(seed)  # the new head's initial weights
    model, tokenizer = load_model(source, labels)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    trained = apply_strategy(model, model_cfg)
    spec = ModelSpec(
        base=model_cfg.base,
        source=source,
        architecture=type(model).__name__,
        model_type=model.config.model_type,
        is_decoder=is_decoder(model.config),
        strategy=model_cfg.strategy,
        total_parameters=count_parameters(trained)[0],
        trainable_parameters=0,
        labels=labels or [],
    )
    spec = spec_as_trained(spec, trained, model_cfg)
    write_json(out_dir, MODEL_SPEC, spec.to_dict())
    return spec
