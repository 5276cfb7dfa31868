"""Differentially private fine-tuning (train.privacy): DP-SGD through Opacus on the training loop of core.py.

Opacus's hooks give each text's gradient of the trained layers; its DPOptimizer clips each to max_grad_norm and
adds Gaussian noise to their sum before AdamW steps; batches are drawn by Poisson sampling (each text in each batch
with probability batch_size / texts), which is what the accountant's guarantee assumes; the noise is the least that
spends at most the target epsilon over every epoch's steps."""

from __future__ import annotations

import random
from dataclasses import dataclass

from components.config import ConfigError, PrivacyConfig

ACCOUNTANT = "prv"  # Opacus's default: tighter than RDP for the same noise


@dataclass
class PrivateTraining:
    """The per-text gradient hooks, the noisy optimizer and the accountant of one training."""

    hooks: object  # opacus.GradSampleModule, whose hooks stay on the model's own layers
    optimizer: object  # opacus.optimizers.DPOptimizer around the AdamW
    accountant: object
    noise_multiplier: float
    sample_rate: float
    delta: float

    def step(self) -> None:
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)

    def epsilon(self) -> float:
        return float(self.accountant.get_epsilon(self.delta))


def poisson_batches(texts: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of texts / batch_size batches, each text in each with probability batch_size / texts."""
    rate = min(1.0, batch_size / texts)
    return [[i for i in range(texts) if rng.random() < rate] for _ in range(max(1, round(texts / batch_size)))]


def make_private(
    model, optimizer, privacy: PrivacyConfig, batch_size: int, texts: int, total_steps: int, steps_done: int = 0
) -> PrivateTraining:
    """The model's trained layers hooked for per-text gradients and the optimizer made DP-SGD's, with the noise that
    spends privacy.epsilon over total_steps; `steps_done` (a resumed training) are counted as spent."""
    from opacus import GradSampleModule
    from opacus.accountants import create_accountant
    from opacus.accountants.utils import get_noise_multiplier
    from opacus.optimizers import DPOptimizer

    check_layers(model)
    sample_rate = min(1.0, batch_size / texts)
    noise = get_noise_multiplier(
        target_epsilon=privacy.epsilon,
        target_delta=privacy.delta,
        sample_rate=sample_rate,
        steps=total_steps,
        accountant=ACCOUNTANT,
    )
    accountant = create_accountant(ACCOUNTANT)
    if steps_done:
        accountant.history = [(noise, sample_rate, steps_done)]
    hooks = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    dp_optimizer = DPOptimizer(
        optimizer, noise_multiplier=noise, max_grad_norm=privacy.max_grad_norm, expected_batch_size=batch_size
    )
    return PrivateTraining(hooks, dp_optimizer, accountant, noise, sample_rate, privacy.delta)


def check_layers(model) -> None:
    """A ConfigError naming each trained layer Opacus cannot give per-text gradients of (and why)."""
    from opacus.validators import ModuleValidator

    model.train()  # as it trains (Opacus refuses a model in eval mode)
    trained = {
        name for name, module in model.named_modules() if any(p.requires_grad for p in module.parameters(recurse=False))
    }
    problems = [
        error
        for error in ModuleValidator.validate(model, strict=False)
        if not getattr(error, "module_name", None) or error.module_name in trained
    ]
    if problems:
        raise ConfigError(
            "train.privacy: Opacus cannot train these layers privately: "
            + "; ".join(map(str, problems))
            + ". Choose another model.strategy or model.base"
        )
