"""The files stages hand each other inside their output folders (KFP artifacts), and one reader for each. A stage
that needs another's output reads it here, never by a file name of its own."""

from __future__ import annotations

import json
from pathlib import Path

MANIFEST = "manifest.json"  # stage 1, beside the splits: labels, counts per split, fingerprint, schema
MODEL_SPEC = "model_spec.json"  # stage 2: which weights, which layers train (copied beside the fine-tuned model)
ENVIRONMENT = "environment.json"  # stage 3: device, precision, threads, versions
TRAIN_RESULT = "train_result.json"  # stage 4, beside the fine-tuned model: epochs, losses, times
LABEL_MAP = "label_map.json"  # beside every model and in the bundle: class index -> label
DEPLOYMENT = "deployment.json"  # stage 6: the parity and int8 report (also in the bundle)
BUNDLE = "bundle"  # stage 6: the folder that is registered and served
BUNDLE_MODEL = "model.onnx"  # in the bundle: the graph that is served
REFERENCE = "reference.parquet"  # in the bundle: training texts as the served graph sees them (drift reference)
CALIBRATION = "calibration.json"  # in the bundle: the temperature stage 5 fitted, when it kept one
TEMPERATURE_TAG = "temperature"  # stage 5's tag on the registered version, which stage 6 puts in the bundle


def write_json(folder: str | Path, name: str, content: dict) -> Path:
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, default=str))
    return path


def _read_json(folder: str | Path, name: str) -> dict:
    return json.loads((Path(folder) / name).read_text())


def read_manifest(data_dir: str | Path) -> dict:
    return _read_json(data_dir, MANIFEST)


def read_model_spec(model_dir: str | Path) -> dict:
    return _read_json(model_dir, MODEL_SPEC)


def read_environment(env_dir: str | Path) -> dict:
    return _read_json(env_dir, ENVIRONMENT)


def read_train_result(model_dir: str | Path) -> dict:
    return _read_json(model_dir, TRAIN_RESULT)


def write_labels(model_dir: str | Path, labels: list[str]) -> None:
    write_json(model_dir, LABEL_MAP, dict(enumerate(labels)))


def read_labels(model_dir: str | Path) -> list[str]:
    """The class labels in index order."""
    return list(_read_json(model_dir, LABEL_MAP).values())


def read_temperature(bundle: str | Path) -> float:
    """The served logits are divided by this before the softmax (1.0: no calibration)."""
    return _read_json(bundle, CALIBRATION)["temperature"] if (Path(bundle) / CALIBRATION).is_file() else 1.0


def bundle_dir(deploy_dir: str | Path) -> Path:
    return Path(deploy_dir) / BUNDLE
