"""Partial and head training: the blocks below the trainable ones are frozen and run without dropout, so they
give every text the same output in every epoch. Run them once per text, then train the top on that output."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from components.model.blocks import transformer_blocks
from components.text_batches import EncodedSplit, autocast, collate, eval_batches


class _Captured(Exception):
    def __init__(self, hidden):
        self.hidden = hidden


def frozen_outputs(
    model,
    split: EncodedSplit,
    frozen: int,
    batch_size: int,
    max_tokens: int | None,
    pad_id: int,
    device: str,
    precision: str,
) -> list:
    """Per text, the output of the last frozen block (unpadded, fp32, on the CPU), from one pass in eval mode."""

    def stop(module, args, output):  # nothing above the frozen blocks needs to run
        raise _Captured(output)

    handle = transformer_blocks(model)[frozen - 1].register_forward_hook(stop)
    states = [None] * len(split)
    model.eval()
    try:
        with torch.no_grad(), autocast(device, precision):
            for indices in eval_batches(split, batch_size, max_tokens):
                batch = collate(split, indices, pad_id, device)
                batch.pop("labels", None)
                try:
                    model(**batch)
                except _Captured as captured:
                    hidden = captured.hidden.float().cpu()
                for row, i in enumerate(indices):
                    states[i] = hidden[row, : len(split.input_ids[i])].clone()
    finally:
        handle.remove()
    return states


class CachedBlocks(torch.nn.Module):
    """Stands in for the frozen blocks: gives the first trainable block the cached output for the batch."""

    def __init__(self):
        super().__init__()
        self.batch = None

    def feed(self, states: list, indices: list[int], device: str) -> None:
        rows = [states[i] for i in indices]
        self.batch = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True).to(device, non_blocking=True)

    def forward(self, hidden_states, *args, **kwargs):
        return self.batch


@contextmanager
def standing_in(model, frozen: int, stand_in: CachedBlocks):
    """The model with its lowest `frozen` blocks replaced by `stand_in`; the blocks are put back on exit.

    The trainable blocks keep their positions, so parameter names (checkpoints, best weights) do not change.
    """
    blocks = transformer_blocks(model)
    originals = [blocks[i] for i in range(frozen)]
    for i in range(frozen):
        blocks[i] = stand_in
    try:
        yield
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block
