"""Every file that crosses a stage or a process, and one typed reader for each. A stage that needs another's
output, a rank that needs its job, a command that needs a run's config, reads it here, never by a name of its
own. What each file holds is declared once, as a plain dataclass in handoff_records.py."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING

from components.handoff_records import (
    Environment,
    FineTuneJob,
    GateOutcome,
    Manifest,
    ModelSpec,
    StudyRef,
    TrainResult,
)

if TYPE_CHECKING:
    import pandas as pd

# Stage 1, in the data folder
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"  # labels, counts per split, fingerprint, schema
VALIDATION_REPORT = "validation.json"  # great-expectations' results, per file read
DATA_DOCS = "validation_{source}.html"  # great-expectations' data docs, one page per file read
# With data.pii=report: {split: {row: its text redacted}} for the rows holding personal data, what the prediction
# log's redact form makes of them (stages 6 and 7 read it instead of scanning the splits again)
REDACTED_TEXTS = "redacted_texts.json"
# Stage 2, in the initial model's folder (copied beside the fine-tuned model by stage 4)
MODEL_SPEC = "model_spec.json"
# Beside a fine-tuned model's base weights when they are not merged into them (components/model/loading.py save_trained)
PEFT_ADAPTER = "peft_adapter"  # a folder: peft's adapter_config.json and adapter weights
BOTTLENECK_ADAPTERS = "bottleneck_adapters.json"  # the adapters' config; their weights in .safetensors beside it
# Stage 3
ENVIRONMENT = "environment.json"
# Stage 4, beside the fine-tuned model
TRAIN_RESULT = "train_result.json"
LABEL_MAP = "label_map.json"  # beside every model and in the bundle: class index -> label
JOB = "job.json"  # what each rank (or each TrainJob node) is given: fine_tune's arguments
STUDY = "study.json"  # a sweep's study, for its workers
SWEEP_ACCOUNT = "sweep.json"  # beside a sweep's winning model: the study's account (components/sweep)
# Stage 5
MODEL_CARD = "model_card.md"
METRICS = "metrics.json"
GATE = "gate.json"  # the gate's verdict and the version registered (stage 6 deploys that one)
TEMPERATURE_TAG = "temperature"  # stage 5's tag on the registered version, which stage 6 puts in the bundle
# A classifier's PyTorch logits of the test split, with the device, precision and max_length they were computed
# with: stage 6's parity check reuses them where it would compute the same
TEST_LOGITS = "test_logits.npz"
# Stage 6
DEPLOYMENT = "deployment.json"  # the parity and int8 report (also in the bundle)
BUNDLE = "bundle"  # the folder that is registered and served
BUNDLE_MODEL = "model.onnx"  # in the bundle: the graph that is served
REFERENCE = "reference.parquet"  # in the bundle: training texts as the served graph sees them (drift reference)
CALIBRATION = "calibration.json"  # in the bundle: the temperature stage 5 fitted, when it kept one
# In the bundle of a model trained on redacted texts (data.pii=redact): the pii section it was redacted with, so
# that what it scores is redacted the same way
INPUT_PII = "input_pii.json"
# In the bundle, from the fine-tuned model's folder where present: the tokenizer's files, the label map, the
# transformers config
BUNDLE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    LABEL_MAP,
    "config.json",
)
# Stage 7
DRIFT_REPORT = "drift_report.html"  # Evidently's report; absent when the window was too small for a verdict
DRIFT_SUMMARY = "drift_summary.json"
ALERT = "{id}.json"  # a drift alert, in the monitor run's alert/ artifacts and a local copy
# The pipeline run
CONFIG = "config.json"  # the whole config, an artifact of the MLflow parent run (what --resume reads)


def write_json(folder: str | Path, name: str, content: dict) -> Path:
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, default=str))
    return path


def _read_json(folder: str | Path, name: str) -> dict:
    return json.loads((Path(folder) / name).read_text())


def split_path(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / f"{split}.parquet"


def read_split(data_dir: str | Path, split: str) -> pd.DataFrame:
    """One of stage 1's splits: text, label, source (and group with data.group_column)."""
    import pandas as pd

    return pd.read_parquet(split_path(data_dir, split))


def read_texts(data_dir: str | Path, split: str, limit: int | None = None) -> list[str]:
    return read_split(data_dir, split)["text"].head(limit).tolist()


def read_redacted(data_dir: str | Path, split: str) -> dict[int, str] | None:
    """{row: text redacted} of a split's rows holding personal data, as stage 1 found them; None where stage 1 did
    not keep them (data.pii other than report, a generator's examples)."""
    if not (Path(data_dir) / REDACTED_TEXTS).is_file():
        return None
    return {int(row): text for row, text in _read_json(data_dir, REDACTED_TEXTS)[split].items()}


def read_manifest(data_dir: str | Path) -> Manifest:
    return Manifest(**_read_json(data_dir, MANIFEST))


def data_docs_path(data_dir: str | Path, source: str) -> Path:
    return Path(data_dir) / DATA_DOCS.format(source=source)


def data_docs_page(data_dir: str | Path) -> str:
    """The data docs as one page: the only page, or every page (in file order) framed in one."""
    pages = sorted(Path(data_dir).glob(DATA_DOCS.format(source="*")))
    if len(pages) == 1:
        return pages[0].read_text()
    frames = "".join(
        f"<h2>{page.stem.removeprefix('validation_')}</h2><iframe style='width:100%;height:80vh' "
        f'srcdoc="{html.escape(page.read_text())}"></iframe>'
        for page in pages
    )
    return f"<!doctype html><html><body>{frames}</body></html>"


def stage_reports(data_dir: str | Path) -> list[Path]:
    """Stage 1's validation report and data docs (what MLflow keeps under validation/)."""
    return sorted([*Path(data_dir).glob(DATA_DOCS.format(source="*")), Path(data_dir) / VALIDATION_REPORT])


def read_model_spec(model_dir: str | Path) -> ModelSpec:
    raw = _read_json(model_dir, MODEL_SPEC)
    if "lora_target_modules" in raw:  # written before the field was renamed (older registered versions)
        raw["adapted_modules"] = raw.pop("lora_target_modules")
    return ModelSpec(**raw)


def read_environment(env_dir: str | Path) -> Environment:
    return Environment(**_read_json(env_dir, ENVIRONMENT))


def read_train_result(model_dir: str | Path) -> TrainResult:
    return TrainResult(**_read_json(model_dir, TRAIN_RESULT))


def rehome_train_result(model_dir: str | Path) -> TrainResult:
    """A model folder copied from where it was trained (a TrainJob node, a sweep's trial): its result names its
    new place."""
    from dataclasses import replace

    result = replace(read_train_result(model_dir), model_dir=str(model_dir))
    write_json(model_dir, TRAIN_RESULT, result.to_dict())
    return result


def read_study(study_dir: str | Path) -> StudyRef:
    return StudyRef(**_read_json(study_dir, STUDY))


def read_sweep(model_dir: str | Path) -> dict | None:
    """The account of the sweep a model won, or None for a model that one training run made."""
    return _read_json(model_dir, SWEEP_ACCOUNT) if (Path(model_dir) / SWEEP_ACCOUNT).is_file() else None


def read_gate(evaluation_dir: str | Path) -> GateOutcome:
    return GateOutcome(**_read_json(evaluation_dir, GATE))


def write_labels(model_dir: str | Path, labels: list[str]) -> None:
    write_json(model_dir, LABEL_MAP, dict(enumerate(labels)))


def read_labels(model_dir: str | Path) -> list[str]:
    """The class labels in index order."""
    return list(_read_json(model_dir, LABEL_MAP).values())


def write_job(folder: str | Path, job: FineTuneJob) -> Path:
    path = Path(folder) / JOB
    path.write_text(job.to_json())
    return path


def read_job(path: str | Path) -> FineTuneJob:
    """A rank's job, from the file torchrun's command names."""
    return FineTuneJob.from_json(Path(path).read_text())


def read_temperature(bundle: str | Path) -> float:
    """The served logits are divided by this before the softmax (1.0: no calibration)."""
    return _read_json(bundle, CALIBRATION)["temperature"] if (Path(bundle) / CALIBRATION).is_file() else 1.0


def read_deployment(bundle: str | Path) -> dict | None:
    """Stage 6's report in the bundle (None for a bundle made before it was copied there)."""
    return _read_json(bundle, DEPLOYMENT) if (Path(bundle) / DEPLOYMENT).is_file() else None


def read_input_pii(bundle: str | Path) -> dict | None:
    """The pii section the bundle's inputs are redacted with before scoring (None: scored as they come)."""
    return _read_json(bundle, INPUT_PII) if (Path(bundle) / INPUT_PII).is_file() else None


def write_test_logits(evaluation_dir: str | Path, logits, device: str, precision: str, max_length: int) -> None:
    import numpy as np

    np.savez(Path(evaluation_dir) / TEST_LOGITS, logits=logits, computed_with=[device, precision, str(max_length)])


def read_test_logits(evaluation_dir: str | Path) -> tuple | None:
    """(logits, device, precision, max_length) as stage 5 wrote them, or None where it wrote none."""
    import numpy as np

    path = Path(evaluation_dir) / TEST_LOGITS
    if not path.is_file():
        return None
    with np.load(path) as saved:
        device, precision, max_length = saved["computed_with"].tolist()
        return saved["logits"], device, precision, int(max_length)


def model_card_path(evaluation_dir: str | Path) -> Path:
    return Path(evaluation_dir) / MODEL_CARD


def bundle_dir(deploy_dir: str | Path) -> Path:
    return Path(deploy_dir) / BUNDLE


def drift_report_path(drift_dir: str | Path) -> Path:
    return Path(drift_dir) / DRIFT_REPORT


def copy_drift_report(drift_dir: str | Path, destination: str | Path) -> None:
    """The report as its own artifact, when there is one (not when the window was too small for a verdict)."""
    import shutil

    if drift_report_path(drift_dir).is_file():
        shutil.copy(drift_report_path(drift_dir), destination)


def model_uri(name: str, alias: str) -> str:
    """The registered model's version that `alias` names now: what is served and compared with."""
    return f"models:/{name}@{alias}"


def version_uri(name: str, version: str) -> str:
    return f"models:/{name}/{version}"


def run_config_uri(run_id: str) -> str:
    """The config a pipeline run used, logged on its MLflow parent run."""
    return f"runs:/{run_id}/{CONFIG}"
