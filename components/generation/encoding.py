"""Examples as a causal LM reads them: the prompt rendered (the tokenizer's chat template, or the config's prompt
template), the response and the end-of-sequence token after it, and each token's target, so that only the response
carries the loss; per-example response losses; greedy generation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.config.schema_generation import GenerationConfig
from components.text_batches import IGNORED, EncodedSplit, autocast, collate, eval_batches


def render_prompt(turns: list[dict], tokenizer, gen: GenerationConfig) -> str:
    """The text before the response, with the special tokens it starts with written out (every later step
    tokenizes without adding any): the chat template with the generation prompt, or the prompt template with
    earlier turns before it; for plain text (no turns) only the tokenizer's beginning-of-sequence token."""
    if not turns:
        return begin_of_sequence(tokenizer)
    if gen.chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    earlier = "".join(f"{turn['role']}: {turn['content']}\n\n" for turn in turns[:-1])
    return begin_of_sequence(tokenizer) + earlier + gen.prompt_template.format(prompt=turns[-1]["content"])


def render_user_prompt(prompt: str, tokenizer, gen: GenerationConfig) -> str:
    """A user's prompt (a test case's, a served request's) rendered as training rendered its examples: after the
    system prompt where the config gives one."""
    system = [{"role": "system", "content": gen.system_prompt}] if gen.system_prompt else []
    return render_prompt([*system, {"role": "user", "content": prompt}], tokenizer, gen)


def begin_of_sequence(tokenizer) -> str:
    """The token the tokenizer puts first by itself (Llama's <s>), or nothing (GPT-2)."""
    ids = tokenizer("a")["input_ids"]
    bos = tokenizer.bos_token_id
    return tokenizer.bos_token if bos is not None and ids and ids[0] == bos else ""


@dataclass
class EncodedExamples:
    split: EncodedSplit  # input_ids and token_labels
    prompt_tokens: list[int]  # each example's prompt length in tokens (before truncation)
    full_tokens: list[int]  # prompt, response and end-of-sequence, before truncation

    def truncated(self, max_length: int) -> np.ndarray:
        return np.asarray(self.full_tokens) > max_length

    def untrained(self, max_length: int) -> np.ndarray:
        """Examples whose response lies wholly past max_length: no token of theirs would carry the loss."""
        return np.asarray(self.prompt_tokens) >= max_length


def encode_examples(
    tokenizer, prompts: list[str], responses: list[str], max_length: int, train_on_prompt: bool = False
) -> EncodedExamples:
    """Token ids (prompt, response, end of sequence; cut at max_length) and targets: the response's and the end's
    tokens, and the prompt's too with train_on_prompt."""
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    ids, targets = [], []
    for prompt, response in zip(prompt_ids, response_ids):
        row = prompt + response + [tokenizer.eos_token_id]
        target = row if train_on_prompt else [IGNORED] * len(prompt) + response + [tokenizer.eos_token_id]
        ids.append(row[:max_length])
        targets.append(target[:max_length])
    return EncodedExamples(
        EncodedSplit(ids, None, targets),
        [len(p) for p in prompt_ids],
        [len(p) + len(r) + 1 for p, r in zip(prompt_ids, response_ids)],
    )


@dataclass
class ResponseLosses:
    """Per example: the summed cross-entropy of its target tokens, how many there are and how many the model
    predicted (argmax)."""

    loss_sums: np.ndarray
    tokens: np.ndarray
    correct: np.ndarray

    def mean_loss(self) -> float:
        """Per token over the whole split, as the training loss averages."""
        return float(self.loss_sums.sum() / max(self.tokens.sum(), 1))

    def accuracy(self) -> float:
        return float(self.correct.sum() / max(self.tokens.sum(), 1))

    def per_example(self) -> np.ndarray:
        return self.loss_sums / np.maximum(self.tokens, 1)


def response_logits(model, batch: dict):
    """(logits, targets) at the positions that predict a target token (position t predicts token t + 1): the
    model's head runs only from the first to the last such position of the batch (transformers' logits_to_keep),
    since over a vocabulary of tens of thousands of tokens, the head and its softmax over every prompt position are
    a large share of a small LM's work. Goes through the model's own forward, so DDP and peft wrappers hold."""
    import torch

    targets = batch["labels"][:, 1:]
    kept = (targets != IGNORED).any(0).nonzero().flatten()
    positions = torch.arange(int(kept.min()), int(kept.max()) + 1, device=targets.device) if len(kept) else kept
    inputs = {name: value for name, value in batch.items() if name != "labels"}
    return model(**inputs, logits_to_keep=positions).logits, targets[:, positions]


def response_loss(model, batch: dict):
    """The batch's mean cross-entropy over its target tokens, as the model's own loss computes it."""
    import torch

    logits, targets = response_logits(model, batch)
    if not targets.numel():  # no target in the batch (stage 1 refuses such examples): nothing to learn, not NaN
        return logits.sum() * 0.0
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORED)


def response_losses(
    model, split: EncodedSplit, batch_size: int, pad_id: int, device: str, precision: str, max_tokens: int | None = None
) -> ResponseLosses:
    """Each example's loss on its target tokens (the logits at position t predict token t + 1)."""
    import torch

    model.eval()
    n = len(split)
    sums, tokens, correct = np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    with torch.inference_mode(), autocast(device, precision):
        for indices in eval_batches(split, batch_size, max_tokens):
            logits, targets = response_logits(model, collate(split, indices, pad_id, device))
            logits = logits.float()
            losses = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), targets, ignore_index=IGNORED, reduction="none"
            )
            kept = targets != IGNORED
            sums[indices] = (losses * kept).sum(1).cpu().numpy()
            tokens[indices] = kept.sum(1).cpu().numpy()
            correct[indices] = ((logits.argmax(-1) == targets) & kept).sum(1).cpu().numpy()
    return ResponseLosses(sums, tokens, correct)


def generate(
    model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, device: str, progress=None
) -> list[str]:
    """Greedy continuations of the rendered prompts, up to the end-of-sequence token or max_new_tokens (batched,
    padded on the left as a decoder generates)."""
    import torch

    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                batch = tokenizer(
                    prompts[start : start + batch_size], add_special_tokens=False, padding=True, return_tensors="pt"
                ).to(device)
                made = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
                new = made[:, batch["input_ids"].shape[1] :]
                out += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
                if progress:
                    progress.update(len(new))
    finally:
        tokenizer.padding_side = side
    return out
