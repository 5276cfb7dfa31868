"""Text in, label and probabilities out, through onnxruntime: what the registered model and the server run.

A bundle is a directory with `model.onnx`, the tokenizer files and `label_map.json`. Needs no torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BUNDLE_MODEL = "model.onnx"


class OnnxClassifier:
    def __init__(self, bundle_dir: str | Path, onnx_file: str = BUNDLE_MODEL, threads: int | None = None):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        bundle_dir = Path(bundle_dir)
        self.labels = self.read_labels(bundle_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(bundle_dir)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(bundle_dir / onnx_file), options, providers=["CPUExecutionProvider"])

    @staticmethod
    def read_labels(bundle_dir: str | Path) -> list[str]:
        return list(json.loads((Path(bundle_dir) / "label_map.json").read_text()).values())

    def logits(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Logits in the order of `texts`; batches are formed from texts of similar length (less padding)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            encoded = self.tokenizer([texts[i] for i in indices], truncation=True, padding=True, return_tensors="np")
            feed = {"input_ids": encoded["input_ids"].astype(np.int64),
                    "attention_mask": encoded["attention_mask"].astype(np.int64)}
            out[indices] = self.session.run(["logits"], feed)[0]
        return out

    def probabilities(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        return softmax(self.logits(texts, batch_size))

    def predict(self, texts: list[str]) -> list[dict]:
        """[{"label": ..., "probabilities": {label: p}}] for each text."""
        return [{"label": self.labels[int(p.argmax())], "probabilities": dict(zip(self.labels, map(float, p)))}
                for p in self.probabilities(texts)]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
