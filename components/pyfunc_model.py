"""The registered model as MLflow users call it: raw texts in, label and class probabilities out."""

from __future__ import annotations

import json

import mlflow.pyfunc
import pandas as pd

BATCH_SIZE = 64


class TextClassifier(mlflow.pyfunc.PythonModel):
    """Loads the fine-tuned transformers model from the artifact `model_dir`; predicts on a `text` column."""

    def load_context(self, context) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model_dir = context.artifacts["model_dir"]
        self.labels = list(json.loads(open(f"{model_dir}/label_map.json").read()).values())
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        import torch

        texts = _texts(model_input)
        rows = []
        with torch.inference_mode():
            for start in range(0, len(texts), BATCH_SIZE):
                batch = self.tokenizer(texts[start:start + BATCH_SIZE], truncation=True,
                                       padding=True, return_tensors="pt")
                rows.append(torch.softmax(self.model(**batch).logits.float(), dim=-1))
        probs = torch.cat(rows).numpy() if rows else []
        return pd.DataFrame({
            "label": [self.labels[int(p.argmax())] for p in probs],
            "probabilities": [{label: float(v) for label, v in zip(self.labels, p)} for p in probs],
        })


def _texts(model_input) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        if "text" not in model_input.columns:
            raise ValueError(f"expected a column 'text', got columns {list(model_input.columns)}")
        return model_input["text"].astype(str).tolist()
    if isinstance(model_input, str):
        return [model_input]
    return [str(t) for t in model_input]
