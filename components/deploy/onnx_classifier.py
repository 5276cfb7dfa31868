"""Text in, label and probabilities out, through onnxruntime: what the registered model and the server run.

A bundle is a directory with `model.onnx`, the tokenizer files, `label_map.json`, when stage 5 kept a
temperature, `calibration.json` and, for a model trained on redacted texts, `input_pii.json` (texts are redacted
the same way before they are scored). Needs no torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.handoff import BUNDLE_MODEL, read_input_pii, read_labels, read_temperature
from components.statistics import softmax

EMBEDDING_OUTPUT = "sentence_embedding"  # the graph's second output, for embedding drift
SUB_BATCH = 4  # texts per onnxruntime call; the fastest on this 2-core CPU for batches of 32


class OnnxClassifier:
    def __init__(
        self,
        bundle_dir: str | Path,
        onnx_file: str = BUNDLE_MODEL,
        threads: int | None = None,
        spinning: bool = True,
        provider: str = "CPUExecutionProvider",
    ):
        """spinning: onnxruntime's idle threads spin, which is faster for a session alone (about 10% here) and
        slower when two share the cores, as a server's champion and candidate do (benchmarks/shadow.py).
        provider: onnxruntime's execution provider (benchmarks/serving.py also times CUDAExecutionProvider)."""
        import onnxruntime as ort
        from transformers import AutoTokenizer

        bundle_dir = Path(bundle_dir)
        self.labels = read_labels(bundle_dir)
        self.temperature = read_temperature(bundle_dir)
        self.prepare = _input_form(read_input_pii(bundle_dir))
        self.tokenizer = AutoTokenizer.from_pretrained(bundle_dir)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:  # idle pool threads sleep: another session in the process gets the cores
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(bundle_dir / onnx_file), options, providers=[provider])

    def logits(self, texts: list[str], batch_size: int = SUB_BATCH) -> np.ndarray:
        return self.run(texts, ["logits"], batch_size)[0]

    def run(self, texts: list[str], outputs: list[str], batch_size: int = SUB_BATCH) -> list[np.ndarray]:
        """The graph's named outputs ("logits", EMBEDDING_OUTPUT), rows in the order of `texts`. Texts are tokenized
        once, sorted by length and run in small batches of similar lengths: on a CPU the padding saved outweighs
        the extra calls (benchmarks/serving.py)."""
        ids = self.tokenizer(self.prepare(list(texts)), truncation=True)["input_ids"]
        order = np.argsort([len(row) for row in ids], kind="stable")
        results = [np.empty((0, 0), dtype=np.float32) for _ in outputs]
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            width = max(len(ids[i]) for i in indices)
            input_ids = np.full((len(indices), width), self.tokenizer.pad_token_id, dtype=np.int64)
            mask = np.zeros((len(indices), width), dtype=np.int64)
            for row, i in enumerate(indices):  # right padding, as in training
                input_ids[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = 1
            values = self.session.run(outputs, {"input_ids": input_ids, "attention_mask": mask})
            if start == 0:
                results = [np.empty((len(texts), *v.shape[1:]), dtype=v.dtype) for v in values]
            for result, value in zip(results, values):
                result[indices] = value
        return results

    def probabilities(self, texts: list[str], batch_size: int = SUB_BATCH) -> np.ndarray:
        return softmax(self.logits(texts, batch_size), self.temperature)

    def predict(self, texts: list[str]) -> list[dict]:
        """[{"label": ..., "probabilities": {label: p}}] for each text."""
        probabilities = self.probabilities(texts)
        return [
            {"label": self.labels[int(p.argmax())], "probabilities": by_label}
            for p, by_label in zip(probabilities, label_probabilities(self.labels, probabilities))
        ]


def _input_form(input_pii: dict | None):
    """What the model scores of a text: the text, or the text redacted as its training texts were."""
    if input_pii is None:
        return list
    from components.config import PiiConfig
    from components.pii import REDACT, text_form

    return text_form(REDACT, PiiConfig(**input_pii))


def label_probabilities(labels: list[str], probabilities) -> list[dict[str, float]]:
    """One {label: probability} mapping per row of class probabilities."""
    return [dict(zip(labels, map(float, row))) for row in probabilities]
