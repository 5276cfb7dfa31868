"""The MLflow model registry: the champion as a predictor for the gate, and registering a new version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

CHAMPION = "champion"
CHALLENGER = "challenger"


def champion_predictor(model_name: str, labels: list[str]):
    """(version, predictor) of the registered model's `champion`, or None when there is none yet."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None
    model = mlflow.pyfunc.load_model(f"models:/{model_name}@{CHAMPION}")

    def predict(texts: list[str]) -> np.ndarray:
        import pandas as pd

        out = model.predict(pd.DataFrame({"text": texts}))
        return np.array([[row.get(label, 0.0) for label in labels] for row in out["probabilities"]])

    return version.version, predict


def register_model(model_dir: str, model_name: str, card: str, tags: dict[str, str], promote: bool,
                   example_texts: list[str]) -> str:
    """Log the fine-tuned model as a pyfunc in the active run, register it, describe and tag it; when `promote`,
    point the alias `challenger` at it. Returns the new version."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    from components.pyfunc_model import TextClassifier

    labels = list(json.loads((Path(model_dir) / "label_map.json").read_text()).values())
    example = pd.DataFrame({"text": example_texts})
    output = pd.DataFrame({"label": labels[:1], "probabilities": [{label: 1.0 / len(labels) for label in labels}]})
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=TextClassifier(),
        artifacts={"model_dir": model_dir},
        code_paths=[str(Path(__file__).parent)],  # the `components` package, so loading needs no install
        signature=infer_signature(example, output),
        input_example=example,
        pip_requirements=_requirements(),
        registered_model_name=model_name,
    )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    client.update_model_version(model_name, version, description=card)
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    if promote:
        client.set_registered_model_alias(model_name, CHALLENGER, version)
    return version


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("torch", "transformers", "pandas", "safetensors", "tokenizers")]
