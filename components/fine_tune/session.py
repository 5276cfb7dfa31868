"""What stage 4's loop works on, made once before the first epoch: the model under its strategy on its device,
the encoded splits (the frozen blocks' outputs cached where the strategy freezes them), AdamW and its schedule,
every epoch's batches, the checkpoint's state, DP-SGD's hooks; and this process among the training processes."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from components.config import ConfigError, ModelConfig, TrainConfig
from components.fine_tune.checkpoint import Checkpoint, TrainingState
from components.fine_tune.pooled_block import first_token_only
from components.handoff import FineTuneJob, ModelSpec, read_model_spec, read_split
from components.model.blocks import set_dropout, transformer_blocks
from components.model.loading import load_model
from components.model.strategies import apply_strategy, spec_as_trained
from components.tasks import task_of
from components.text_batches import train_batches

if TYPE_CHECKING:
    from components.fine_tune.privacy import PrivateTraining

log = logging.getLogger(__name__)


@dataclass
class Ranks:
    """This process among the training processes (torch.distributed under torchrun); alone, rank 0 of 1."""

    rank: int = 0
    world: int = 1

    @property
    def leader(self) -> bool:  # validates, checkpoints, logs and saves
        return self.rank == 0

    @classmethod
    def current(cls) -> Ranks:
        import torch.distributed as dist

        return cls(dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else cls()

    def share(self, batches: list) -> list:
        """This rank's share of an epoch's batches: every rank the same number (the list wrapped round to a
        multiple of the ranks, as PyTorch's DistributedSampler pads), rank r taking every world-th from r."""
        padded = batches + batches[: (-len(batches)) % self.world]
        return padded[self.rank :: self.world]


@dataclass
class Session:
    """What the phases of fine-tuning share: the model (DDP-wrapped across processes), its data and its state."""

    model: object
    tokenizer: object
    labels: list[str] | None  # None: a causal LM (task=generation)
    train: object  # EncodedSplit
    val: object
    optimizer: object
    scheduler: object
    epoch_batches: list[list[list[int]]]  # this rank's batches, per epoch
    checkpoint: Checkpoint
    state: TrainingState
    spec: ModelSpec  # what trains, as trained
    ranks: Ranks
    device: str
    precision: str
    feed_train: Callable | None = None  # partial and head: puts the cached frozen outputs in place
    feed_val: Callable | None = None
    contexts: list = field(default_factory=list)  # what stands in for the frozen blocks, the pooled last block
    resumed_from: int = 0
    seen: int = 0  # training texts seen by this rank
    class_weights: object = None  # train.class_weights: a tensor on the device, one weight per label; None: none
    private: PrivateTraining | None = None  # train.privacy: DP-SGD's hooks, optimizer and accountant
    task: object = None  # components/tasks.py: how validation measures

    @property
    def trained(self):
        """The model without its DDP wrapper: what validates and saves."""
        return getattr(self.model, "module", self.model)


def set_up(job: FineTuneJob, train_cfg: TrainConfig) -> Session:
    """The model under its strategy, the encoded splits, the cached frozen blocks, AdamW and its schedule, every
    epoch's batches, and the checkpoint's state when there is one to resume from."""
    import torch

    ranks = Ranks.current()
    task = task_of(job.task)
    model, tokenizer, labels, spec = _model_to_train(job, task)
    train, val = _encoded(job, task, tokenizer, labels, train_cfg.max_train_samples)
    session_feeds, contexts = (
        _frozen_and_pooled(
            model, job.model_cfg, train_cfg, train, val, tokenizer.pad_token_id, job.device, job.precision
        )
        if task.caches_frozen_blocks
        else ((None, None), [])
    )
    if ranks.world > 1:  # gradients all-reduced across the processes; every rank starts from rank 0's weights
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.cuda.current_device()] if job.device == "cuda" else None
        )
    epoch_batches = _epoch_batches(train, train_cfg, ranks, job.seed)
    total_steps = sum(map(len, epoch_batches))
    optimizer, scheduler = _optimizer(model, train_cfg, job.device, total_steps)
    checkpoint = Checkpoint(job.checkpoint_uri)
    state = checkpoint.load(getattr(model, "module", model), optimizer, scheduler) or TrainingState()
    if state.epoch and ranks.leader:
        log.info("resuming from the checkpoint after epoch %d in %s", state.epoch, job.checkpoint_uri)
    private = None
    if train_cfg.privacy:
        spent = sum(map(len, epoch_batches[: state.epoch]))
        private = _private(model, optimizer, train_cfg, len(train), total_steps, spent)
    weights = (
        torch.tensor(balanced_class_weights(train.labels, len(labels)), device=job.device)
        if train_cfg.class_weights == "balanced"
        else None
    )
    return Session(
        model,
        tokenizer,
        labels,
        train,
        val,
        optimizer,
        scheduler,
        epoch_batches,
        checkpoint,
        state,
        spec,
        ranks,
        job.device,
        job.precision,
        *session_feeds,
        contexts=contexts,
        resumed_from=state.epoch,
        class_weights=weights,
        private=private,
        task=task,
    )


def _model_to_train(job: FineTuneJob, task):
    """(model, tokenizer, labels, spec): stage 2's model under the strategy, on the device, and what trains
    (labels None for a causal LM)."""
    import torch

    model_cfg, device = job.model_cfg, job.device
    quantized = model_cfg.strategy == "qlora"
    if quantized and device != "cuda":
        raise ConfigError(
            f"model.strategy=qlora needs a CUDA GPU (bitsandbytes 4-bit); this machine trains on "
            f"{device}: use model.strategy=lora"
        )
    torch.manual_seed(job.seed)  # LoRA's initial weights and dropout; a resumed run restores the saved RNG state
    labels = task.labels(job.data_dir)
    model, tokenizer = load_model(job.init_dir, labels, quantized)
    if model_cfg.dropout is not None:  # before LoRA adds its own dropout layers
        set_dropout(model, model_cfg.dropout)
    model = apply_strategy(model, model_cfg)
    spec = spec_as_trained(read_model_spec(job.init_dir), model, model_cfg)
    if not quantized:  # bitsandbytes placed the 4-bit model already
        model = model.to(device)
    return model, tokenizer, labels, spec


def _encoded(job: FineTuneJob, task, tokenizer, labels, max_train_samples: int | None) -> tuple:
    """The train (its first max_train_samples) and val splits tokenized once as the task reads them (texts and
    class indices, or prompts and responses)."""
    return tuple(
        task.encode_split(
            tokenizer,
            read_split(job.data_dir, split).head(limit),
            labels,
            job.model_cfg.max_length,
            job.train_on_prompt,
        )
        for split, limit in (("train", max_train_samples), ("val", None))
    )


def _epoch_batches(train, train_cfg: TrainConfig, ranks: Ranks, seed: int) -> list[list[list[int]]]:
    """Every epoch's batches up front, the same on every rank: the schedule needs the number of steps, and a
    resumed run the same order."""
    rng = random.Random(seed)
    if train_cfg.privacy:  # DP-SGD's guarantee holds for Poisson-sampled batches (no token budget)
        from components.fine_tune.privacy import poisson_batches

        return [poisson_batches(len(train), train_cfg.batch_size, rng) for _ in range(train_cfg.epochs)]
    return [
        ranks.share(train_batches(train, train_cfg.batch_size, rng, train_cfg.max_batch_tokens))
        for _ in range(train_cfg.epochs)
    ]


def _private(model, optimizer, train_cfg: TrainConfig, texts: int, total_steps: int, spent_steps: int):
    """DP-SGD's hooks, optimizer and accountant (train.privacy), with the steps a resumed run has spent."""
    from components.fine_tune.privacy import make_private

    privacy = train_cfg.privacy
    private = make_private(model, optimizer, privacy, train_cfg.batch_size, texts, total_steps, spent_steps)
    log.info(
        "DP-SGD: noise multiplier %.3f for ε %g at δ %g over %d steps",
        private.noise_multiplier,
        privacy.epsilon,
        privacy.delta,
        total_steps,
    )
    return private


def _optimizer(model, train_cfg: TrainConfig, device: str, total_steps: int):
    """AdamW without decay on biases and norms, linear warm-up then linear decay to zero."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in trainable if p.ndim > 1], "weight_decay": train_cfg.weight_decay},
        {"params": [p for n, p in trainable if p.ndim <= 1], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=train_cfg.learning_rate, fused=device in ("cuda", "cpu"))
    return optimizer, get_linear_schedule_with_warmup(optimizer, int(train_cfg.warmup_ratio * total_steps), total_steps)


def _frozen_and_pooled(
    model, model_cfg: ModelConfig, train_cfg: TrainConfig, train, val, pad_id: int, device: str, precision: str
) -> tuple[tuple, list]:
    """((feed_train, feed_val), contexts): the frozen blocks give the same output every epoch, so it is computed
    once and the top trains on it; a trained last block runs for the pooled position only (where the architecture
    allows)."""
    frozen = frozen_block_count(model, model_cfg)
    pooled = first_token_only(model) if frozen < len(transformer_blocks(model)) else nullcontext()
    if not frozen:
        return (None, None), [pooled]
    from components.fine_tune.frozen_blocks import CachedBlocks, frozen_outputs, standing_in

    started = time.perf_counter()
    cached = {
        name: frozen_outputs(
            model, split, frozen, train_cfg.eval_batch_size, train_cfg.max_batch_tokens, pad_id, device, precision
        )
        for name, split in (("train", train), ("val", val))
    }
    size_mb = sum(s.numel() * s.element_size() for states in cached.values() for s in states) / 2**20
    log.info(
        "cached the output of the %d frozen blocks for %d texts (%.0f MB, %.1f s)",
        frozen,
        len(train) + len(val),
        size_mb,
        time.perf_counter() - started,
    )
    stand_in = CachedBlocks()
    feeds = (
        lambda indices: stand_in.feed(cached["train"], indices, device),
        lambda indices: stand_in.feed(cached["val"], indices, device),
    )
    return feeds, [standing_in(model, frozen, stand_in), pooled]


def balanced_class_weights(labels, n_classes: int):
    """n / (classes x count) per class, as scikit-learn's class_weight="balanced"; 0 for a class with no text."""
    import numpy as np

    counts = np.bincount(labels, minlength=n_classes).astype(np.float32)
    return np.divide(len(labels), n_classes * counts, out=np.zeros_like(counts), where=counts > 0)


def frozen_block_count(model, model_cfg: ModelConfig) -> int:
    """How many blocks at the bottom train nothing: partial trains the last N, head none, full and LoRA all."""
    if model_cfg.strategy == "head":
        return len(transformer_blocks(model))
    if model_cfg.strategy == "partial":
        return len(transformer_blocks(model)) - model_cfg.trainable_blocks
    return 0
