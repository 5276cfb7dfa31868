"""Stage 4, fine-tuning: length-grouped batches capped by padded tokens, AdamW with warm-up and decay, clipping,
bf16 autocast on GPU, validation each epoch, early stopping with the best weights restored, resumable checkpoints;
partial and head train on cached outputs of the frozen blocks, and a trained last block runs for the pooled token
only. Importable without MLflow or KFP."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from components.config import ConfigError, ModelConfig, TrainConfig, resolved_hyperparameters
from components.console import Progress
from components.fine_tune.checkpoint import Checkpoint, TrainingState
from components.fine_tune.pooled_block import first_token_only
from components.handoff import (
    MODEL_SPEC,
    TRAIN_RESULT,
    FineTuneJob,
    ModelSpec,
    TrainResult,
    read_manifest,
    read_model_spec,
    read_split,
    write_json,
    write_labels,
)
from components.model.core import (
    apply_strategy,
    load_classifier,
    save_trained,
    set_dropout,
    spec_as_trained,
    transformer_blocks,
)
from components.text_batches import autocast, collate, encode, loss_and_accuracy, predict_logits, train_batches

if TYPE_CHECKING:
    from components.fine_tune.privacy import PrivateTraining

MetricsLogger = Callable[[dict, int], None]  # (metrics, step)
EpochHook = Callable[[dict], None]  # an epoch's row of the history; a sweep's pruner raises to stop the training
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
    labels: list[str]
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

    @property
    def trained(self):
        """The model without its DDP wrapper: what validates and saves."""
        return getattr(self.model, "module", self.model)


def fine_tune(
    job: FineTuneJob, log_metrics: MetricsLogger | None = None, after_epoch: EpochHook | None = None
) -> TrainResult | None:
    """Train the stage 2 model on the stage 1 splits; writes a merged safetensors model to job.out_dir.
    Checkpoints go to job.checkpoint_uri, where a later job with the same URI resumes. Under torchrun
    (components/fine_tune/processes.py) each process trains on its share of the batches with DDP; rank 0
    validates, checkpoints, saves and returns the result, the others return None. `after_epoch` (one process
    only) sees each epoch's row once it is checkpointed."""
    train_cfg = job.train_cfg.for_strategy(job.model_cfg)
    log_metrics = log_metrics or (lambda metrics, step: None)
    started = time.perf_counter()
    session = set_up(job, train_cfg)
    with contextlib.ExitStack() as stack:
        for context in session.contexts:
            stack.enter_context(context)
        for epoch in range(session.state.epoch + 1, train_cfg.epochs + 1):
            if session.state.epochs_without_improvement >= train_cfg.early_stopping_patience:
                break
            epoch_start = time.perf_counter()
            train_loss = train_epoch(session, epoch, train_cfg, log_metrics)
            val_loss, val_accuracy = validate(session, train_cfg)
            end_epoch(
                session,
                epoch,
                train_cfg,
                log_metrics,
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "val_accuracy": val_accuracy,
                    "seconds": time.perf_counter() - epoch_start,
                },
            )
            if after_epoch:
                after_epoch(session.state.history[-1])
    if not session.ranks.leader:
        return None
    return finish(session, job, train_cfg, time.perf_counter() - started)


def set_up(job: FineTuneJob, train_cfg: TrainConfig) -> Session:
    """The model under its strategy, the encoded splits, the cached frozen blocks, AdamW and its schedule, every
    epoch's batches, and the checkpoint's state when there is one to resume from."""
    import torch

    model_cfg, device, precision = job.model_cfg, job.device, job.precision
    ranks = Ranks.current()
    quantized = model_cfg.strategy == "qlora"
    if quantized and device != "cuda":
        raise ConfigError(
            f"model.strategy=qlora needs a CUDA GPU (bitsandbytes 4-bit); this machine trains on "
            f"{device}: use model.strategy=lora"
        )
    torch.manual_seed(job.seed)  # LoRA's initial weights and dropout; a resumed run restores the saved RNG state
    labels = read_manifest(job.data_dir).labels
    model, tokenizer = load_classifier(job.init_dir, labels, quantized)
    if model_cfg.dropout is not None:  # before LoRA adds its own dropout layers
        set_dropout(model, model_cfg.dropout)
    model = apply_strategy(model, model_cfg)
    spec = spec_as_trained(read_model_spec(job.init_dir), model, model_cfg)
    if not quantized:  # bitsandbytes placed the 4-bit model already
        model = model.to(device)
    train = _encode_split(tokenizer, job.data_dir, "train", labels, model_cfg.max_length, train_cfg.max_train_samples)
    val = _encode_split(tokenizer, job.data_dir, "val", labels, model_cfg.max_length)
    session_feeds, contexts = _frozen_and_pooled(
        model, model_cfg, train_cfg, train, val, tokenizer.pad_token_id, device, precision
    )
    if ranks.world > 1:  # gradients all-reduced across the processes; every rank starts from rank 0's weights
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.cuda.current_device()] if device == "cuda" else None
        )

    # Every epoch's batches up front, the same on every rank: the schedule needs the number of steps, and a
    # resumed run the same order.
    rng = random.Random(job.seed)
    if train_cfg.privacy:  # DP-SGD's guarantee holds for Poisson-sampled batches (no token budget)
        from components.fine_tune.privacy import poisson_batches

        epoch_batches = [poisson_batches(len(train), train_cfg.batch_size, rng) for _ in range(train_cfg.epochs)]
    else:
        epoch_batches = [
            ranks.share(train_batches(train, train_cfg.batch_size, rng, train_cfg.max_batch_tokens))
            for _ in range(train_cfg.epochs)
        ]
    total_steps = sum(map(len, epoch_batches))
    optimizer, scheduler = _optimizer(model, train_cfg, device, total_steps)
    checkpoint = Checkpoint(job.checkpoint_uri)
    state = checkpoint.load(getattr(model, "module", model), optimizer, scheduler) or TrainingState()
    if state.epoch and ranks.leader:
        log.info("resuming from the checkpoint after epoch %d in %s", state.epoch, job.checkpoint_uri)
    private = None
    if train_cfg.privacy:
        from components.fine_tune.privacy import make_private

        private = make_private(
            model,
            optimizer,
            train_cfg.privacy,
            train_cfg.batch_size,
            len(train),
            total_steps,
            sum(map(len, epoch_batches[: state.epoch])),
        )
        log.info(
            "DP-SGD: noise multiplier %.3f for ε %g at δ %g over %d steps",
            private.noise_multiplier,
            train_cfg.privacy.epsilon,
            train_cfg.privacy.delta,
            total_steps,
        )
    weights = (
        torch.tensor(balanced_class_weights(train.labels, len(labels)), device=device)
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
        device,
        precision,
        *session_feeds,
        contexts=contexts,
        resumed_from=state.epoch,
        class_weights=weights,
        private=private,
    )


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


def train_epoch(session: Session, epoch: int, train_cfg: TrainConfig, log_metrics: MetricsLogger) -> float:
    """One pass over this rank's batches; the loss stays on the device (no host sync per step). Returns the
    epoch's mean training loss over all ranks."""
    import torch

    model, device = session.model, session.device
    model.train()
    running = torch.zeros((), device=device)
    window, window_steps = torch.zeros((), device=device), 0
    batches = session.epoch_batches[epoch - 1]
    first_step = sum(map(len, session.epoch_batches[: epoch - 1]))
    progress = Progress(len(batches), f"epoch {epoch}/{train_cfg.epochs}", log) if session.ranks.leader else None
    optimizer = session.private.optimizer if session.private else session.optimizer
    for step, indices in enumerate(batches, start=1):
        if not indices:  # a Poisson-sampled batch can be empty: the step is counted as spent all the same
            session.private.step()
            continue
        batch = collate(session.train, indices, session.tokenizer.pad_token_id, device)
        if session.feed_train:
            session.feed_train(indices)
        with autocast(device, session.precision):
            loss = training_loss(model, batch, session.class_weights)
        loss.backward()
        if session.private:  # DP-SGD clips each text's gradient instead
            session.private.step()
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.max_grad_norm)
        optimizer.step()
        session.scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running += loss.detach()
        window += loss.detach()
        window_steps += 1
        session.seen += len(indices)
        if window_steps == train_cfg.log_every_steps or step == len(batches):
            if session.ranks.leader:
                log_metrics(
                    {"train_loss": window.item() / window_steps, "learning_rate": session.scheduler.get_last_lr()[0]},
                    first_step + step,
                )
            window, window_steps = torch.zeros((), device=device), 0
        if progress:
            progress.update(1)
    return _mean_over_ranks(running / len(batches), session.ranks)


def balanced_class_weights(labels, n_classes: int):
    """n / (classes x count) per class, as scikit-learn's class_weight="balanced"; 0 for a class with no text."""
    import numpy as np

    counts = np.bincount(labels, minlength=n_classes).astype(np.float32)
    return np.divide(len(labels), n_classes * counts, out=np.zeros_like(counts), where=counts > 0)


def training_loss(model, batch: dict, class_weights=None):
    """The batch's cross-entropy: the model's own, or with `class_weights` each text's weighted by its class and the
    sum divided by the weights' sum (torch's weighted mean)."""
    import torch

    if class_weights is None:
        return model(**batch).loss
    inputs = {name: value for name, value in batch.items() if name != "labels"}
    logits = model(**inputs).logits
    return torch.nn.functional.cross_entropy(logits.float(), batch["labels"], weight=class_weights)


def validate(session: Session, train_cfg: TrainConfig) -> tuple[float, float]:
    """Validation loss and accuracy, computed by rank 0 and shared with the others (which wait for it)."""
    result = [None]
    if session.ranks.leader:
        result[0] = loss_and_accuracy(
            predict_logits(
                session.trained,
                session.val,
                train_cfg.eval_batch_size,
                session.tokenizer.pad_token_id,
                session.device,
                session.precision,
                session.feed_val,
                train_cfg.max_batch_tokens,
            ),
            session.val.labels,
        )
    if session.ranks.world > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(result, src=0)
    return result[0]


def end_epoch(session: Session, epoch: int, train_cfg: TrainConfig, log_metrics: MetricsLogger, row: dict) -> None:
    """The epoch in the history, early stopping on the validation loss, and the checkpoint (by rank 0, which the
    others wait for), so an interrupted run resumes here; the best weights wait on disk, not in memory."""
    state = session.state
    state.history.append(row)
    if session.ranks.leader:
        log_metrics({k: v for k, v in row.items() if k != "epoch"}, epoch)
        log.info(
            "epoch %d/%d: train loss %.4f, val loss %.4f, val accuracy %.2f%% (%.0f s)",
            epoch,
            train_cfg.epochs,
            row["train_loss"],
            row["val_loss"],
            100 * row["val_accuracy"],
            row["seconds"],
        )
    improved = row["val_loss"] < state.best_val_loss
    if improved:
        state.best_val_loss, state.best_epoch, state.epochs_without_improvement = row["val_loss"], epoch, 0
    else:
        state.epochs_without_improvement += 1
    state.epoch = epoch
    if epoch < train_cfg.epochs:  # after the last epoch only saving is left
        if session.ranks.leader:
            session.checkpoint.save(session.trained, session.optimizer, session.scheduler, state, improved)
        _barrier(session.ranks)


def finish(session: Session, job: FineTuneJob, train_cfg: TrainConfig, elapsed: float) -> TrainResult:
    """The best weights back in the model, the model saved (save_trained: LoRA merged, into the full-precision base
    for QLoRA) with its result."""
    state, model, strategy, out_dir = session.state, session.trained, job.model_cfg.strategy, job.out_dir
    if state.best_epoch != state.epoch:  # else the weights in the model are the best
        model.load_state_dict(session.checkpoint.best_weights(), strict=False)
    merged = _save_model(
        model,
        session.tokenizer,
        session.labels,
        job.model_cfg.max_length,
        Path(out_dir),
        job.init_dir,
        strategy == "qlora",
    )
    best = next(r for r in state.history if r["epoch"] == state.best_epoch)
    result = TrainResult(
        model_dir=str(out_dir),
        epochs_run=state.epoch,
        best_epoch=state.best_epoch,
        best_val_loss=state.best_val_loss,
        best_val_accuracy=best["val_accuracy"],
        stopped_early=state.epoch < train_cfg.epochs,
        resumed_from_epoch=session.resumed_from,
        train_seconds=elapsed,
        samples_per_second=session.seen * session.ranks.world / elapsed if elapsed else 0.0,
        history=state.history,
        hyperparameters=resolved_hyperparameters(job.model_cfg, train_cfg),
        epsilon_spent=session.private.epsilon() if session.private else None,
    )
    write_json(out_dir, TRAIN_RESULT, result.to_dict())
    write_json(out_dir, MODEL_SPEC, replace(session.spec, merged_into_base=merged).to_dict())
    return result


def _mean_over_ranks(value, ranks: Ranks) -> float:
    if ranks.world > 1:
        import torch.distributed as dist

        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value = value / ranks.world
    return float(value.item())


def _barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        import torch.distributed as dist

        dist.barrier()


def frozen_block_count(model, model_cfg: ModelConfig) -> int:
    """How many blocks at the bottom train nothing: partial trains the last N, head none, full and LoRA all."""
    if model_cfg.strategy == "head":
        return len(transformer_blocks(model))
    if model_cfg.strategy == "partial":
        return len(transformer_blocks(model)) - model_cfg.trainable_blocks
    return 0


def _encode_split(
    tokenizer, data_dir: str, split: str, labels: list[str], max_length: int, max_samples: int | None = None
):
    rows = read_split(data_dir, split).head(max_samples)
    index = {label: i for i, label in enumerate(labels)}
    return encode(tokenizer, rows["text"].tolist(), max_length, [index[v] for v in rows["label"]])


def _save_model(
    model, tokenizer, labels: list[str], max_length: int, out_dir: Path, init_dir: str, quantized: bool
) -> bool | None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.model_max_length = max_length  # so whoever serves it truncates as training did
    merged = save_trained(model, out_dir, init_dir, labels, quantized)
    tokenizer.save_pretrained(out_dir)
    write_labels(out_dir, labels)
    return merged
