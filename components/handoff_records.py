"""What the files that cross a stage or a process hold, each declared once as a plain dataclass; their names and
readers are in handoff.py."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from components.config import ModelConfig, TrainConfig


@dataclass
class Manifest:
    """Stage 1's account of the splits."""

    out_dir: str
    source: str  # the file(s) read, for the model card and MLflow inputs
    source_sha256: str
    labels: list[str]
    counts: dict[str, dict[str, int]]  # split -> label -> rows
    fingerprint: str  # of the prepared splits: same fingerprint, same data
    dropped_duplicates: int
    dropped_conflicting_texts: int
    dropped_leaking_texts: dict[str, int] = field(default_factory=dict)  # split -> texts an earlier split holds
    skipped_records: int = 0  # damaged records (not JSON, not in the encoding, the wrong number of fields) left out
    skipped_files: int = 0  # feedback files that could not be read at all
    control_characters: str = "strip"  # the policy (data.control_characters)
    stripped_control_characters: int = 0  # texts that held control characters, stripped
    pii: str = "report"  # the policy (data.pii): report, redact, fail or off
    pii_entities: list[str] = field(default_factory=list)  # the kinds of personal data looked for
    pii_found: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> kind -> texts holding it
    pii_texts: dict[str, int] = field(default_factory=dict)  # split -> texts holding any kind
    schema: dict[str, str] = field(default_factory=dict)  # the splits' columns

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """Rows per split and rows dropped, in a line."""
        rows = ", ".join(f"{split} {sum(counts.values()):,}" for split, counts in self.counts.items())
        leaking = sum(self.dropped_leaking_texts.values())
        return (  # a generation data set has no labels (task=generation), so no conflicting ones
            f"{rows} rows; dropped {self.dropped_duplicates:,} duplicates"
            + (f", {self.dropped_conflicting_texts:,} texts with conflicting labels" if self.labels else "")
            + (f", {leaking:,} texts leaking across splits" if leaking else "")
            + (f"; skipped {self.skipped_records:,} damaged records" if self.skipped_records else "")
            + (f" and {self.skipped_files:,} unreadable files" if self.skipped_files else "")
            + (
                f"; stripped control characters from {self.stripped_control_characters:,} texts"
                if self.stripped_control_characters
                else ""
            )
            + (
                f"; {sum(self.pii_texts.values()):,} {'texts' if self.labels else 'examples'} hold personal data"
                f"{' (redacted)' if self.pii == 'redact' else ''}"
                if any(self.pii_texts.values())
                else ""
            )
        )


@dataclass
class ModelSpec:
    """Stage 2: which weights, which layers train."""

    base: str  # as configured
    source: str  # the directory or hub id loaded
    architecture: str
    model_type: str
    is_decoder: bool
    strategy: str
    total_parameters: int
    trainable_parameters: int
    labels: list[str]
    trainable_blocks: int | None = None  # partial
    peft_method: str | None = None  # peft: peft's name of it (IA3, PROMPT_TUNING, ...)
    # the modules that LoRA, the peft method or the bottleneck adapters change, where it names any
    adapted_modules: list[str] | None = None
    merged_into_base: bool | None = None  # peft, after stage 4: the method's weights merged into the base's

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Environment:
    """Stage 3: where and how training runs, and what reproduces it."""

    device: str
    precision: str  # bf16 (autocast over fp32 master weights) or fp32
    threads: int
    seed: int
    hyperparameters: dict
    libraries: dict[str, str]
    hardware: dict
    python: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    """Stage 4: how fine-tuning went."""

    model_dir: str
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    best_val_accuracy: float
    stopped_early: bool
    resumed_from_epoch: int  # 0: started fresh
    train_seconds: float
    samples_per_second: float
    history: list[dict] = field(default_factory=list)  # one row per epoch
    hyperparameters: dict = field(default_factory=dict)  # config.resolved_hyperparameters of this training
    # train.privacy: the privacy spent by all the epochs run (the saved epoch's model spent no more), at its delta
    epsilon_spent: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FineTuneJob:
    """Stage 4's arguments, the same in process, in each rank and on each TrainJob node (where the folders are
    storage URIs): what `job.json` holds."""

    init_dir: str  # stage 2's model
    data_dir: str  # stage 1's splits
    out_dir: str  # the fine-tuned model
    checkpoint_uri: str  # a folder or storage URI; a later job with the same URI resumes
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    device: str
    precision: str
    seed: int
    threads: int = 0  # CPU threads of each rank (0: as many as the machine has, shared by its ranks)
    mlflow_run: tuple[str, str] | None = None  # (tracking URI, run id) that rank 0 logs metrics to
    task: str = "classification"  # the config's task (components/tasks.py)
    train_on_prompt: bool = False  # generation: the prompt's tokens carry the loss too

    def to_json(self) -> str:
        return json.dumps(
            asdict(self)
            | {"model_cfg": self.model_cfg.model_dump(mode="json"), "train_cfg": self.train_cfg.model_dump(mode="json")}
        )

    @classmethod
    def from_json(cls, text: str) -> FineTuneJob:
        from components.config import ModelConfig, TrainConfig

        fields_ = json.loads(text)
        return cls(
            **fields_
            | {
                "model_cfg": ModelConfig(**fields_["model_cfg"]),
                "train_cfg": TrainConfig(**fields_["train_cfg"]),
                "mlflow_run": tuple(fields_["mlflow_run"]) if fields_["mlflow_run"] else None,
            }
        )


@dataclass
class StudyRef:
    """What a sweep's workers are given: the study (named after the sweep's MLflow run) and its deadline."""

    parent_run_id: str
    deadline: float  # seconds since the epoch; 0: none


@dataclass
class GateOutcome:
    """Stage 5's verdict on the model it registered."""

    passed: bool
    reasons: list[str]
    model_version: str  # the registered version (the challenger when the gate passed)
