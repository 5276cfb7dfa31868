"""Stage 6 for task=generation, the proof: the fp32 export's greedy tokens are PyTorch's and their log-probabilities
within a tolerance, and the response perplexity of an export, both through onnxruntime on the builder's graph."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.decision import Decision

END = -1  # in a response's tokens: it ended by itself (onnxruntime-genai reports no end-of-sequence token)
LOGPROB_TOLERANCE = 1e-3  # the largest absolute difference of a generated token's log-probability, fp32 vs PyTorch


class OnnxScorer:
    """The builder's graph (model.onnx) run by a plain onnxruntime session with an empty key-value cache: it returns
    the logits of every position, so one call scores a whole sequence teacher-forced."""

    def __init__(self, folder: str | Path):
        import onnxruntime as ort

        decoder = json.loads((Path(folder) / "genai_config.json").read_text())["model"]["decoder"]
        self.session = ort.InferenceSession(str(Path(folder) / decoder["filename"]), providers=["CPUExecutionProvider"])
        self.empty = {
            i.name: np.zeros(
                (1, decoder["num_key_value_heads"], 0, decoder["head_size"]),
                np.float16 if i.type == "tensor(float16)" else np.float32,
            )
            for i in self.session.get_inputs()
            if i.name.startswith("past_")
        }

    def log_probabilities(self, ids: list[int]) -> np.ndarray:
        """[positions, vocabulary]: position t's log-probabilities of token t + 1."""
        x = np.asarray([ids], dtype=np.int64)
        feeds = {"input_ids": x, "attention_mask": np.ones_like(x), **self.empty}
        if "position_ids" in {i.name for i in self.session.get_inputs()}:
            feeds["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
        logits = self.session.run(["logits"], feeds)[0][0].astype(np.float64)
        return logits - _logsumexp(logits)


def _logsumexp(logits: np.ndarray) -> np.ndarray:
    top = logits.max(-1, keepdims=True)
    return top + np.log(np.exp(logits - top).sum(-1, keepdims=True))


def response_losses(scorer: OnnxScorer, split):
    """Each example's summed cross-entropy on its target tokens (the response's and the end-of-sequence token), as
    stage 5 measures it (components.generation.encoding.response_losses), from the export."""
    from components.generation.encoding import ResponseLosses
    from components.text_batches import IGNORED

    n = len(split)
    sums, tokens, correct = np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for i, (ids, targets) in enumerate(zip(split.input_ids, split.token_labels)):
        logp = scorer.log_probabilities(ids)[:-1]
        wanted = np.asarray(targets[1:])
        kept = np.flatnonzero(wanted != IGNORED)
        sums[i] = -logp[kept, wanted[kept]].sum()
        tokens[i], correct[i] = len(kept), int((logp[kept].argmax(-1) == wanted[kept]).sum())
    return ResponseLosses(sums, tokens, correct)


@dataclass
class GreedyRun:
    """One test prompt generated for greedily by both: its text, its token ids, each side's response tokens (END last
    where it ended by itself) and the log-probabilities of PyTorch's generated tokens from each."""

    prompt: str
    prompt_ids: list[int]  # as training rendered the prompt
    served_ids: list[int]  # as the served bundle renders its messages
    torch_tokens: list[int]
    onnx_tokens: list[int]
    torch_logprobs: np.ndarray | None = None
    onnx_logprobs: np.ndarray | None = None


def torch_greedy(model, tokenizer, ids: list[int], max_tokens: int) -> list[int]:
    """PyTorch's greedy tokens for one prompt (no padding: the export is compared with the model, not a batch),
    ending with the end-of-sequence token where it stopped, as stage 5 generates."""
    import torch

    with torch.inference_mode():
        made = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return made[0, len(ids) :].tolist()


def torch_log_probabilities(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, -1).numpy()


def token_logprobs(log_probabilities: np.ndarray, prompt_length: int, tokens: list[int]) -> np.ndarray:
    """The log-probability of each generated token where it was generated."""
    rows = np.arange(prompt_length - 1, prompt_length - 1 + len(tokens))
    return log_probabilities[rows, tokens]


def decide_generation_parity(runs: list[GreedyRun], tokenizer, tolerance: float = LOGPROB_TOLERANCE) -> Decision[bool]:
    """Does the fp32 export answer as the PyTorch model does? Every prompt's greedy tokens identical, and every
    generated token's log-probability within `tolerance`. A failure names the prompt and the first differing
    token."""
    for run in runs:
        if run.served_ids != run.prompt_ids:
            return Decision(
                False,
                f"ONNX parity failed on the test prompt {run.prompt[:200]!r}: the bundle renders it to other tokens "
                f"than training did ({len(run.served_ids)} tokens, training {len(run.prompt_ids)})",
            )
        n = next((i for i, (a, b) in enumerate(zip(run.torch_tokens, run.onnx_tokens)) if a != b), None)
        if n is None and len(run.torch_tokens) != len(run.onnx_tokens):
            n = min(len(run.torch_tokens), len(run.onnx_tokens))
        if n is not None:
            ours, theirs = (_token(tokenizer, t, n) for t in (run.onnx_tokens, run.torch_tokens))
            return Decision(
                False,
                f"ONNX parity failed on the test prompt {run.prompt[:200]!r}: the fp32 export's greedy token {n + 1} "
                f"is {ours} where PyTorch's is {theirs}",
            )
    for run in runs:
        diff = np.abs(run.onnx_logprobs - run.torch_logprobs)
        if diff.max(initial=0.0) > tolerance:
            return Decision(
                False,
                f"ONNX parity failed on the test prompt {run.prompt[:200]!r}: the log-probability of its greedy "
                f"token {int(diff.argmax()) + 1} differs from PyTorch's by {diff.max():.2e} (allowed {tolerance:.0e})",
            )
    largest, tokens = largest_logprob_difference(runs), sum(len(r.torch_tokens) for r in runs)
    return Decision(
        True,
        f"ONNX parity passed on {len(runs)} test prompts: the fp32 export's {tokens} greedy tokens are PyTorch's, "
        f"their log-probabilities within {largest:.1e} (allowed {tolerance:.0e})",
    )


def _token(tokenizer, tokens: list[int], n: int) -> str:
    if n >= len(tokens):
        return "no token (the length limit)"
    if tokens[n] == END:
        return "the end of the response"
    return f"{tokens[n]} ({tokenizer.decode([tokens[n]])!r})"


def largest_logprob_difference(runs: list[GreedyRun]) -> float:
    return max((float(np.abs(r.onnx_logprobs - r.torch_logprobs).max(initial=0.0)) for r in runs), default=0.0)
