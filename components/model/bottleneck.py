"""Bottleneck adapters (Houlsby et al., 2019): after the attention and after the feed-forward block of every
transformer block, a down-projection, a non-linearity and an up-projection, added to what they read (a residual
connection). The up-projection starts at zero, so a new adapter is the identity and training starts from the base
model's own outputs. Written here because AdapterHub's `adapters` package requires transformers 4.57.

An adapter is a child module of the output projection it follows, called by a forward hook: the base model's own
parameter names stay as they were, so its weights save and load as a plain Hugging Face model and the adapters
beside it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from components.config import AdapterConfig
from components.handoff import BOTTLENECK_ADAPTERS, write_json
from components.model.blocks import ModelError, transformer_blocks

ADAPTER_CHILD = "bottleneck_adapter"  # the adapter's name under the projection it follows
ADAPTER_WEIGHTS = "bottleneck_adapters.safetensors"


def add_adapters(model, blocks, cfg: AdapterConfig) -> None:
    """One trainable adapter after each output projection that `cfg.after` names, in every block of `blocks`."""
    for index, block in enumerate(blocks):
        projections = output_projections(block)
        for place in cfg.after:
            if place not in projections:
                raise ModelError(
                    f"{type(block).__name__} (block {index} of {model.config.model_type}): found no "
                    f"{place.replace('_', '-')} output projection (a Linear or Conv1D layer) for an "
                    "adapter; set model.adapter.after to the places it has"
                )
            projection = projections[place][1]
            width = projection.out_features if isinstance(projection, torch.nn.Linear) else projection.nf
            adapter = Bottleneck(width, cfg.size, cfg.activation).to(projection.weight.device)
            projection.add_module(ADAPTER_CHILD, adapter)
            projection.register_forward_hook(_through_adapter)
    model.bottleneck_config = cfg  # what save_adapters writes beside the weights


def output_projections(block) -> dict[str, tuple[str, object]]:
    """place -> (name in the block, module): `attention` is the last linear layer of the block's attention module
    (BERT attention.output.dense, GPT-2 attn.c_proj, Llama self_attn.o_proj), `feed_forward` the block's last
    linear layer outside it (output.dense, mlp.c_proj, mlp.down_proj)."""
    attention = next((name for name, _ in block.named_children() if "attn" in name or "attention" in name), None)
    linear = [(name, module) for name, module in block.named_modules() if _is_linear(module)]
    inside = [item for item in linear if attention and item[0].startswith(attention + ".")]
    outside = [item for item in linear if item not in inside]
    found = {}
    if inside:
        found["attention"] = inside[-1]
    if outside:
        found["feed_forward"] = outside[-1]
    return found


def adapted_module_names(model) -> list[str]:
    """The modules that an adapter follows, by their names inside a block (e.g. attention.output.dense)."""
    return [
        name
        for name, module in transformer_blocks(model)[0].named_modules()
        if hasattr(module, ADAPTER_CHILD) and isinstance(getattr(module, ADAPTER_CHILD), Bottleneck)
    ]


def adapter_weights(model) -> dict:
    """The adapters' tensors by their names in the model's state dict."""
    return {name: tensor for name, tensor in model.state_dict().items() if f".{ADAPTER_CHILD}." in name}


def save_adapters(model, out_dir: Path) -> None:
    """The adapters' config and weights beside the base model's weights in out_dir."""
    from safetensors.torch import save_file

    write_json(out_dir, BOTTLENECK_ADAPTERS, model.bottleneck_config.model_dump())
    save_file({name: tensor.contiguous() for name, tensor in adapter_weights(model).items()}, out_dir / ADAPTER_WEIGHTS)


def load_adapters(model, folder: Path) -> None:
    """The adapters that save_adapters wrote, inserted into `model` (the base, loaded from the same folder)."""
    from safetensors.torch import load_file

    add_adapters(
        model, transformer_blocks(model), AdapterConfig(**json.loads((folder / BOTTLENECK_ADAPTERS).read_text()))
    )
    weights = load_file(folder / ADAPTER_WEIGHTS)
    missing = set(adapter_weights(model)) ^ set(weights)
    if missing:
        raise ModelError(
            f"{folder / ADAPTER_WEIGHTS}: the adapter weights do not fit {folder / BOTTLENECK_ADAPTERS}"
            f" (e.g. {sorted(missing)[0]})"
        )
    model.load_state_dict(weights, strict=False)


def _is_linear(module) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"  # GPT-2's linear layers


def _through_adapter(projection, inputs, output):
    return getattr(projection, ADAPTER_CHILD)(output)


class Bottleneck(torch.nn.Module):
    """hidden + up(activation(down(hidden))), with up at zero to begin with."""

    def __init__(self, width: int, size: int, activation: str):
        super().__init__()
        self.down = torch.nn.Linear(width, size)
        self.activation = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU, "silu": torch.nn.SiLU, "tanh": torch.nn.Tanh}[
            activation
        ]()
        self.up = torch.nn.Linear(size, width)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)

    def forward(self, hidden):
        return hidden + self.up(self.activation(self.down(hidden)))
