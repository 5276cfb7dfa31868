"""The sweep's search space: each strategy's default space (what `lifecycle tune` searches where tune.space does not
say otherwise), a space as a user writes it, and the config's own values of the searched keys (trial 0)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from components.config import Distribution

if TYPE_CHECKING:
    from components.config import LifecycleConfig, ModelConfig

# The search space of each strategy where tune.space does not say otherwise: the learning rate (log scale) around
# the strategy's default first, then epochs, batch size, warm-up and weight decay; LoRA's rank, alpha, dropout and
# target modules; partial's number of trained blocks; the adapters' size. Keys are the config's dotted paths.
COMMON_SPACE = {
    "train.epochs": {"low": 2, "high": 5},
    "train.batch_size": {"choices": [16, 32, 64]},
    "train.warmup_ratio": {"low": 0.0, "high": 0.2},
    "train.weight_decay": {"low": 0.0, "high": 0.1},
}
STRATEGY_SPACE = {
    "lora": {
        "model.lora.r": {"choices": [4, 8, 16, 32]},
        "model.lora.alpha": {"choices": [8, 16, 32, 64]},
        "model.lora.dropout": {"low": 0.0, "high": 0.2},
        "model.lora.target_modules": {"choices": [None, "all-linear"]},
    },
    "partial": {"model.trainable_blocks": {"low": 1, "high": 3}},
    "adapter": {"model.adapter.size": {"choices": [16, 32, 64, 128]}},
}
STRATEGY_SPACE["qlora"] = {k: v for k, v in STRATEGY_SPACE["lora"].items() if k != "model.lora.target_modules"}


def search_space(cfg: LifecycleConfig) -> dict[str, Distribution]:
    """The strategy's default space with tune.space's overrides: key -> distribution, in search order."""
    merged = {
        "train.learning_rate": _learning_rates(cfg.model, cfg.task),
        **COMMON_SPACE,
        **STRATEGY_SPACE.get(cfg.model.strategy, {}),
    } | cfg.tune.space
    return {
        key: spec if isinstance(spec, Distribution) else Distribution(**spec)
        for key, spec in merged.items()
        if spec is not None
    }


def _learning_rates(model_cfg: ModelConfig, task: str) -> dict:
    """A fifth of the strategy's default learning rate (for the task) to five times it."""
    default = model_cfg.training_defaults(task)[1]
    return {"low": default / 5, "high": default * 5, "log": True}


def defaults(cfg: LifecycleConfig) -> dict:
    """The config's own value of each searched key."""
    dumped = cfg.model_dump(mode="json")
    return {key: _value_at(dumped, key) for key in search_space(cfg)}


def space_as_given(cfg: LifecycleConfig) -> dict:
    """The search space as a user writes it in tune.space (what the sweep's run and the card show)."""
    return {key: spec.model_dump(exclude_defaults=True) for key, spec in search_space(cfg).items()}


def _value_at(mapping: dict, key: str):
    for part in key.split("."):
        mapping = mapping[part]
    return mapping


def params_text(params: dict) -> str:
    return " ".join(
        f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}" for key, value in params.items()
    )
