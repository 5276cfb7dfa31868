"""The architecture as the strategies see it: the list of transformer blocks, the dropout layers, parameter
counts, whether a model is a decoder; and the error of a base model that cannot be used."""

from __future__ import annotations

from components.errors import LifecycleError


class ModelError(LifecycleError):
    """A base model that cannot be used: names the model and what was expected."""


def transformer_blocks(model):
    """The list of transformer blocks (BERT `encoder.layer`, GPT-2 `h`, DistilBERT `transformer.layer`, ...)."""
    import torch

    depth = model.config.num_hidden_layers
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == depth]
    if not lists:
        raise ModelError(f"{type(model).__name__}: found no list of {depth} transformer blocks for partial training")
    return lists[0]


def set_dropout(model, rate: float) -> None:
    """Every dropout layer of the model at `rate` (in BERT and GPT-2 the attention's dropout is one too)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = rate


def count_parameters(model) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


DECODER_TYPES = {"gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "qwen3", "phi", "opt"}


def is_decoder(config) -> bool:
    return bool(getattr(config, "is_decoder", False)) or config.model_type in DECODER_TYPES
