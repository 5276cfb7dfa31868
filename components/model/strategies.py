"""Each strategy's trainable parameters (full, partial, lora, head, qlora, peft, adapter) and the spec of what
trains, for stage 2 and for a sweep's trial, which may train other blocks or another LoRA than stage 2 described."""

from __future__ import annotations

from components.config import ModelConfig
from components.handoff import ModelSpec
from components.model.blocks import ModelError, count_parameters, is_decoder, transformer_blocks


def apply_strategy(model, model_cfg: ModelConfig):
    """Freeze what the strategy keeps fixed; returns the model to train (a peft model for lora, qlora and peft)."""
    strategy = model_cfg.strategy
    if strategy == "full":
        model.requires_grad_(True)
        return model
    if strategy in ("lora", "qlora"):
        from peft import LoraConfig as PeftLoraConfig
        from peft import TaskType, prepare_model_for_kbit_training

        if strategy == "qlora":  # norms and head in fp32, gradient checkpointing, inputs that carry gradients
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        lora = model_cfg.lora
        peft_config = PeftLoraConfig(
            # SEQ_CLS also trains and saves the new head (classifier/score)
            task_type=TaskType.CAUSAL_LM if generates(model) else TaskType.SEQ_CLS,
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            # None: peft's default for the architecture; QLoRA adapts every linear layer
            target_modules="all-linear" if strategy == "qlora" else lora.target_modules,
        )
        return _peft_model(model, peft_config, "LoRA", "set model.lora.target_modules")
    if strategy == "peft":
        return _peft_model(
            model,
            model_cfg.peft.peft_config("CAUSAL_LM" if generates(model) else "SEQ_CLS"),
            model_cfg.peft.method.lower(),
            "see the arguments of peft's config for it",
        )
    # partial, head and adapter: embeddings and the lower blocks stay frozen; everything registered after the blocks
    # (final norm, pooler, head) trains, plus the last `trainable_blocks` blocks for partial, plus the adapters.
    blocks = transformer_blocks(model)
    keep = model_cfg.trainable_blocks if strategy == "partial" else 0
    if keep > len(blocks):
        raise ModelError(f"model.trainable_blocks={keep} but the model has {len(blocks)} blocks")
    block_of = {id(p): i for i, block in enumerate(blocks) for p in block.parameters()}
    first_block_param = id(next(blocks[0].parameters()))
    below_blocks = True
    for param in model.parameters():
        if id(param) == first_block_param:
            below_blocks = False
        index = block_of.get(id(param))
        if index is None:
            param.requires_grad_(not below_blocks)
        else:
            param.requires_grad_(index >= len(blocks) - keep)
    if strategy == "adapter":
        from components.model.bottleneck import add_adapters

        add_adapters(model, blocks, model_cfg.adapter)
    return model


def generates(model) -> bool:
    """A causal LM that generates (task=generation), not a classifier."""
    return type(model).__name__.endswith("ForCausalLM")


def _peft_model(model, peft_config, method: str, hint: str):
    import inspect

    from peft import get_peft_model

    if peft_config.is_prompt_learning and generates(model):
        # Their virtual tokens come before the prompt's: the response losses and generations read positions by
        # the token ids alone.
        raise ModelError(f"{method}: prompt-style peft methods are not built for task=generation; use lora, ia3, loha")
    if peft_config.is_prompt_learning and is_decoder(model.config):
        # peft hands such a decoder embeddings, not token ids, so its head reads the last position of the padded
        # batch: a padding token for every text but the longest.
        raise ModelError(
            f"{method} on the decoder {model.config.model_type}: its classification head would read a "
            "padding token; on a decoder use a method that changes weights (lora, ia3, loha, ...) or "
            "model.strategy=adapter"
        )
    if (
        peft_config.peft_type == "PREFIX_TUNING"
        and "past_key_values" not in inspect.signature(model.forward).parameters
    ):
        raise ModelError(
            f"{method} on {model.config.model_type}: peft passes the prefix as past_key_values, which "
            f"this model's forward does not take (transformers 5 calls it cache); use prompt_tuning or "
            "p_tuning on an encoder"
        )
    try:
        return get_peft_model(model, peft_config)
    except (ValueError, TypeError, NotImplementedError) as err:
        raise ModelError(f"{method} on {model.config.model_type}: {err}; {hint}") from None


def spec_as_trained(spec: ModelSpec, trained, model_cfg: ModelConfig) -> ModelSpec:
    """The spec with what trains in `trained` (the model under the config's strategy): a sweep's trial may train
    other blocks or another LoRA than stage 2 described."""
    from dataclasses import replace

    strategy = model_cfg.strategy
    return replace(
        spec,
        strategy=strategy,
        trainable_blocks=model_cfg.trainable_blocks if strategy == "partial" else None,
        peft_method=model_cfg.peft.method if strategy == "peft" else None,
        adapted_modules=_adapted_modules(trained, strategy),
        trainable_parameters=count_parameters(trained)[1],
    )


def _adapted_modules(trained, strategy: str) -> list[str] | None:
    """The names of the modules that LoRA, a peft method or the bottleneck adapters change, where they name any."""
    if strategy == "adapter":
        from components.model.bottleneck import adapted_module_names

        return adapted_module_names(trained)
    if strategy in ("lora", "qlora", "peft"):
        targets = getattr(trained.peft_config["default"], "target_modules", None)
        return sorted(targets) if isinstance(targets, (set, list)) else ([targets] if targets else None)
    return None
