"""The seam between the lifecycle and what a model learns to do (the config's `task`). The stages stay the stages;
what differs per task is here, once: which model is loaded, how a split is encoded and its loss made, what
validation measures, and which core stages 1 and 5 run. Classification's parts are the ones the stages always had;
generation's are in components/generation/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Classification:
    """A label per text: a classification head on the base, cross-entropy over the classes."""

    name: str = "classification"
    caches_frozen_blocks: bool = True  # partial and head train on the frozen blocks' cached output
    unit: str = "texts"  # what a split holds, in what a run prints
    target: str = "label"  # the splits' column a model learns to give (MLflow's dataset targets)

    def measured(self, loss: float, accuracy: float) -> str:
        """What validation found, as a run prints it."""
        return f"val accuracy {accuracy:.2%}"

    def labels(self, data_dir) -> list[str] | None:
        from components.handoff import read_manifest

        return read_manifest(data_dir).labels

    def encode_split(self, tokenizer, rows, labels: list[str], max_length: int, train_on_prompt: bool = False):
        from components.text_batches import encode

        index = {label: i for i, label in enumerate(labels)}
        return encode(tokenizer, rows["text"].tolist(), max_length, [index[v] for v in rows["label"]])

    def loss(self, model, batch: dict, class_weights=None):
        """The batch's cross-entropy: the model's own, or with `class_weights` each text's weighted by its class and
        the sum divided by the weights' sum (torch's weighted mean)."""
        import torch

        if class_weights is None:
            return model(**batch).loss
        inputs = {name: value for name, value in batch.items() if name != "labels"}
        logits = model(**inputs).logits
        return torch.nn.functional.cross_entropy(logits.float(), batch["labels"], weight=class_weights)

    def validate(self, model, split, batch_size, pad_id, device, precision, before_batch, max_tokens):
        """(cross-entropy, accuracy) over the split's texts."""
        from components.text_batches import loss_and_accuracy, predict_logits

        logits = predict_logits(model, split, batch_size, pad_id, device, precision, before_batch, max_tokens)
        return loss_and_accuracy(logits, split.labels)

    def prepare_data(self, cfg, out_dir: str | Path):
        """Stage 1 (components/data/core.py); then stage 5's test cases and fairness labels are checked against
        the data's labels, so a mistake in them stops the run before training, not after."""
        from components.data.core import data
        from components.evaluate.fairness import check_positive_labels
        from components.evaluate.suite_runs import read_suite

        manifest = data(cfg.data, cfg.seed, Path(cfg.work_dir) / "downloads", out_dir, cfg.pii)
        read_suite(cfg, manifest.labels)
        check_positive_labels(cfg.fairness.positive_labels, manifest.labels)
        return manifest


@dataclass(frozen=True)
class Generation:
    """A response to a prompt (or domain text): a causal LM, the loss on the response's tokens."""

    name: str = "generation"
    caches_frozen_blocks: bool = False  # every position's output trains, not one pooled token's
    unit: str = "examples"
    target: str = "response"

    def measured(self, loss: float, accuracy: float) -> str:
        import math

        return f"val perplexity {math.exp(loss):.2f}, response-token accuracy {accuracy:.2%}"

    def labels(self, data_dir) -> list[str] | None:
        return None  # the causal LM's own vocabulary; no head is added

    def encode_split(self, tokenizer, rows, labels, max_length: int, train_on_prompt: bool = False):
        from components.generation.encoding import encode_examples

        encoded = encode_examples(
            tokenizer, rows["prompt"].tolist(), rows["response"].tolist(), max_length, train_on_prompt
        )
        return encoded.split

    def loss(self, model, batch: dict, class_weights=None):
        """The mean cross-entropy of the batch's target tokens (the response's, unless train_on_prompt)."""
        from components.generation.encoding import response_loss

        return response_loss(model, batch)

    def validate(self, model, split, batch_size, pad_id, device, precision, before_batch, max_tokens):
        """(the response tokens' mean cross-entropy, next-token accuracy on them)."""
        from components.generation.encoding import response_losses

        losses = response_losses(model, split, batch_size, pad_id, device, precision, max_tokens)
        return losses.mean_loss(), losses.accuracy()

    def prepare_data(self, cfg, out_dir: str | Path):
        """Stage 1 (components/data/examples.py), with the base model's tokenizer."""
        from components.data.examples import prepare_examples
        from components.evaluate.suite_runs import read_suite
        from components.model.loading import load_tokenizer, resolve_base

        read_suite(cfg)  # now, so a mistake in the test cases stops the run before training, not after
        tokenizer = load_tokenizer(resolve_base(cfg.model.base))
        return prepare_examples(
            cfg.data,
            cfg.generation,
            tokenizer,
            cfg.model.max_length,
            cfg.seed,
            Path(cfg.work_dir) / "downloads",
            out_dir,
            cfg.pii,
        )


TASKS = {"classification": Classification(), "generation": Generation()}


def task_of(name: str):
    """The task the config names (validated there: classification or generation)."""
    return TASKS[name]
