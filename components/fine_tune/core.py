"""Stage 4, fine-tuning: the loop in phases (each epoch's pass with clipping and bf16 autocast on a GPU, validation,
early stopping with the best weights restored, a resumable checkpoint, the model saved). What it works on is made
once in session.py: length-grouped batches capped by padded tokens, AdamW with warm-up and decay, the cached
outputs of the frozen blocks that partial and head train on, DP-SGD's hooks. Importable without MLflow or KFP."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from components.config import TrainConfig, resolved_hyperparameters
from components.fine_tune.session import Ranks, Session, set_up
from components.handoff import MODEL_SPEC, TRAIN_RESULT, FineTuneJob, TrainResult, write_json, write_labels
from components.model.loading import save_trained
from components.stage_output import Progress
from components.text_batches import autocast, collate

MetricsLogger = Callable[[dict, int], None]  # (metrics, step)
EpochHook = Callable[[dict], None]  # an epoch's row of the history; a sweep's pruner raises to stop the training
log = logging.getLogger(__name__)


def fine_tune(
    job: FineTuneJob, log_metrics: MetricsLogger | None = None, after_epoch: EpochHook | None = None
) -> TrainResult | None:
    """Train the stage 2 model on the stage 1 splits; writes a merged safetensors model to job.out_dir.
    Checkpoints go to job.checkpoint_uri, where a later job with the same URI resumes. Under torchrun
    (components/fine_tune/torchrun.py) each process trains on its share of the batches with DDP; rank 0
    validates, checkpoints, saves and returns the result, the others return None. `after_epoch` (one process
    only) sees each epoch's row once it is checkpointed."""
    train_cfg = job.train_cfg.for_strategy(job.model_cfg, job.task)
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
            loss = session.task.loss(model, batch, session.class_weights)
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


def validate(session: Session, train_cfg: TrainConfig) -> tuple[float, float]:
    """Validation loss and accuracy, computed by rank 0 and shared with the others (which wait for it)."""
    result = [None]
    if session.ranks.leader:
        result[0] = session.task.validate(
            session.trained,
            session.val,
            train_cfg.eval_batch_size,
            session.tokenizer.pad_token_id,
            session.device,
            session.precision,
            session.feed_val,
            train_cfg.max_batch_tokens,
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
            "epoch %d/%d: train loss %.4f, val loss %.4f, %s (%.0f s)",
            epoch,
            train_cfg.epochs,
            row["train_loss"],
            row["val_loss"],
            session.task.measured(row["val_loss"], row["val_accuracy"]),
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


def _save_model(
    model, tokenizer, labels: list[str] | None, max_length: int, out_dir: Path, init_dir: str, quantized: bool
) -> bool | None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.model_max_length = max_length  # so whoever serves it truncates as training did
    merged = save_trained(model, out_dir, init_dir, labels, quantized)
    tokenizer.save_pretrained(out_dir)
    if labels is not None:
        write_labels(out_dir, labels)
    return merged
