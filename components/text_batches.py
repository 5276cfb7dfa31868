"""Tokenize once, batch with dynamic padding, and run a classifier over a whole split."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

IGNORED = -100  # a token's target that carries no loss (torch's cross_entropy ignore_index)


@dataclass
class EncodedSplit:
    input_ids: list[list[int]]
    labels: np.ndarray | None  # class indices; None for unlabelled text
    token_labels: list[list[int]] | None = None  # generation: each token's target, -100 where it carries no loss

    def __len__(self) -> int:
        return len(self.input_ids)


def encode(tokenizer, texts: list[str], max_length: int, labels: list[int] | None = None) -> EncodedSplit:
    """Tokenize every text once, truncated, unpadded: padding happens per batch."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)["input_ids"]
    return EncodedSplit(ids, None if labels is None else np.asarray(labels, dtype=np.int64))


def train_batches(
    split: EncodedSplit, batch_size: int, rng: random.Random, max_tokens: int | None = None
) -> list[list[int]]:
    """Shuffled batches of similar lengths: sort within pools of 50 batches, then shuffle the batches.

    Less padding per batch than plain shuffling, while each epoch still sees a different order. A batch holds
    at most `batch_size` texts and, when given, at most `max_tokens` padded tokens: long texts come in smaller
    batches, which caps the activation memory of a step.
    """
    order = list(range(len(split)))
    rng.shuffle(order)
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        batches += _cut_by_length(split, order[start : start + pool], batch_size, max_tokens)
    rng.shuffle(batches)
    return batches


def eval_batches(split: EncodedSplit, batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Batches sorted by length: the least padding; results are put back in the original order."""
    return _cut_by_length(split, range(len(split)), batch_size, max_tokens)


def _cut_by_length(split: EncodedSplit, indices, batch_size: int, max_tokens: int | None) -> list[list[int]]:
    """Sort the texts by length and cut batches of at most batch_size texts and max_tokens padded tokens."""
    batches, batch = [], []
    for i in sorted(indices, key=lambda i: len(split.input_ids[i])):
        # Sorted by length, so this text is the longest of the batch so far: it sets the padded width.
        if batch and (
            len(batch) == batch_size or max_tokens and (len(batch) + 1) * len(split.input_ids[i]) > max_tokens
        ):
            batches.append(batch)
            batch = []
        batch.append(i)
    return batches + [batch] if batch else batches


def collate(split: EncodedSplit, indices: list[int], pad_id: int, device: str) -> dict:
    """Right-pad a batch to its longest text (decoders pool the last non-pad token)."""
    import torch

    rows = [split.input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if split.labels is not None:
        batch["labels"] = torch.from_numpy(split.labels[indices])
    if split.token_labels is not None:  # the causal LM shifts them by one itself
        batch["labels"] = torch.full((len(rows), width), IGNORED, dtype=torch.long)
        for r, i in enumerate(indices):
            batch["labels"][r, : len(split.token_labels[i])] = torch.tensor(split.token_labels[i])
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def predict_logits(
    model,
    split: EncodedSplit,
    batch_size: int,
    pad_id: int,
    device: str,
    precision: str,
    before_batch: Callable[[list[int]], None] | None = None,
    max_tokens: int | None = None,
):
    """Logits for every text of the split, in the split's order, as float32 on the CPU.

    before_batch(indices) runs before each batch (training feeds cached frozen-block outputs with it)."""
    import torch

    model.eval()
    out = torch.empty((len(split), model.config.num_labels), dtype=torch.float32)
    with torch.inference_mode(), autocast(device, precision):
        for indices in eval_batches(split, batch_size, max_tokens):
            batch = collate(split, indices, pad_id, device)
            batch.pop("labels", None)
            if before_batch:
                before_batch(indices)
            out[indices] = model(**batch).logits.float().cpu()
    return out


def loss_and_accuracy(logits, labels: np.ndarray) -> tuple[float, float]:
    import torch

    targets = torch.from_numpy(labels)
    loss = torch.nn.functional.cross_entropy(logits, targets).item()
    return loss, (logits.argmax(-1) == targets).float().mean().item()


def autocast(device: str, precision: str):
    import torch

    return torch.autocast(
        device_type=device if device != "mps" else "cpu", dtype=torch.bfloat16, enabled=precision == "bf16"
    )
