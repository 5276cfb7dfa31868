"""The registered models as MLflow users call them: raw texts in (a `text` column), a `label` and the class
`probabilities` out; for task=generation, prompts in (a `prompt` column), a `generation` out. Stage 5 registers the
PyTorch model, stage 6 the ONNX bundle that is served."""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

BATCH_SIZE = 64


class TextClassifier(mlflow.pyfunc.PythonModel):
    """The fine-tuned transformers model from the artifact `model_dir`."""

    def load_context(self, context) -> None:
        from components.handoff import read_labels
        from components.model.loading import load_classifier

        model_dir = context.artifacts["model_dir"]
        self.labels = read_labels(model_dir)
        model, self.tokenizer = load_classifier(model_dir, self.labels)  # with its adapters where saved beside it
        self.model = model.eval()

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        import torch

        texts = _texts(model_input)
        rows = []
        with torch.inference_mode():
            for start in range(0, len(texts), BATCH_SIZE):
                batch = self.tokenizer(
                    texts[start : start + BATCH_SIZE], truncation=True, padding=True, return_tensors="pt"
                )
                rows.append(torch.softmax(self.model(**batch).logits.float(), dim=-1))
        return as_frame(self.labels, torch.cat(rows).numpy() if rows else [])


class OnnxTextClassifier(mlflow.pyfunc.PythonModel):
    """The ONNX bundle (graph, tokenizer, label map) from the artifact `bundle`, run by onnxruntime."""

    def load_context(self, context) -> None:
        from components.deploy.onnx_classifier import OnnxClassifier

        self.classifier = OnnxClassifier(context.artifacts["bundle"])

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        texts = _texts(model_input)
        return as_frame(self.classifier.labels, self.classifier.probabilities(texts) if texts else [])


class TextGenerator(mlflow.pyfunc.PythonModel):
    """The fine-tuned causal LM from the artifact `model_dir`, its prompts rendered as in training (the artifact
    `prompt_format`: the generation section's rendering keys), greedy decoding."""

    def load_context(self, context) -> None:
        import json

        from components.config.schema_generation import GenerationConfig
        from components.model.loading import load_model

        model, self.tokenizer = load_model(context.artifacts["model_dir"], None)
        self.model = model.eval()
        with open(context.artifacts["prompt_format"]) as file:
            self.generation = GenerationConfig(**json.load(file))

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from components.generation.encoding import generate, render_user_prompt

        rendered = [render_user_prompt(p, self.tokenizer, self.generation) for p in _prompts(model_input)]
        max_new_tokens = int((params or {}).get("max_new_tokens", self.generation.max_new_tokens))
        return pd.DataFrame(
            {"generation": generate(self.model, self.tokenizer, rendered, max_new_tokens, BATCH_SIZE, "cpu")}
        )


class OnnxTextGenerator(mlflow.pyfunc.PythonModel):
    """The generator's ONNX bundle from the artifact `bundle`, run by onnxruntime-genai (its prompts rendered as in
    training), greedy decoding."""

    def load_context(self, context) -> None:
        from components.deploy.onnx_generator import OnnxGenerator

        self.generator = OnnxGenerator(context.artifacts["bundle"])

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from components.deploy.onnx_generator import Sampling

        max_new_tokens = int((params or {}).get("max_new_tokens", self.generator.prompts.generation.max_new_tokens))
        asked = [[{"role": "user", "content": p}] for p in _prompts(model_input)]
        done = self.generator.complete(asked, Sampling(max_new_tokens))
        return pd.DataFrame({"generation": [c.text.strip() for c in done]})


def as_frame(labels: list[str], probabilities) -> pd.DataFrame:
    from components.deploy.onnx_classifier import label_probabilities

    return pd.DataFrame(
        {
            "label": [labels[int(p.argmax())] for p in probabilities],
            "probabilities": label_probabilities(labels, probabilities),
        }
    )


def _texts(model_input) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        if "text" not in model_input.columns:
            raise ValueError(f"expected a column 'text', got columns {list(model_input.columns)}")
        return model_input["text"].astype(str).tolist()
    if isinstance(model_input, str):
        return [model_input]
    return [str(t) for t in model_input]


def _prompts(model_input) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        if "prompt" not in model_input.columns:
            raise ValueError(f"expected a column 'prompt', got columns {list(model_input.columns)}")
        return model_input["prompt"].astype(str).tolist()
    return [model_input] if isinstance(model_input, str) else [str(p) for p in model_input]
