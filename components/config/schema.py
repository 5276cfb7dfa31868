"""The one typed configuration of a lifecycle run, validated at the edge (the CLI) before any stage runs: its
sections are in schema_data.py, schema_training.py, schema_operations.py, schema_serving.py and schema_sweep.py."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import field_validator, model_validator

from components.config.schema_data import DataConfig, PiiConfig
from components.config.schema_evaluation import FairnessConfig, TestCasesConfig
from components.config.schema_generation import GenerationConfig
from components.config.schema_operations import GateConfig, KfpConfig, MonitorConfig, StorageConfig, TrackingConfig
from components.config.schema_serving import DeployConfig, ServeConfig
from components.config.schema_sweep import TuneConfig
from components.config.schema_training import GENERATION_STRATEGIES, NOT_PRIVATE, ModelConfig, TrainConfig
from components.config.section import Section
from components.model.bundled_llm import BUNDLED_LLM


class LifecycleConfig(Section):
    """A lifecycle run's whole configuration: the data, the model, its training, the gate, serving and monitoring."""

    name: str = "lifecycle"
    """The project's name (letters, digits, - and _): it starts the names of MLflow runs, pipelines and TrainJobs."""
    task: Literal["classification", "generation"] = "classification"
    """What the model learns to do. classification: a label per text (data.text_column, data.label_column);
    generation: a response to a prompt, or domain text, with a causal LM (the generation section)."""
    seed: int = 123
    """The seed of every random choice: splits, samples, weight initialisation, batch order, the sweep's sampler."""
    work_dir: str = "work"
    """The local folder of a run's files: downloads, the SQLite tracking store, and checkpoints, predictions and
    alerts where storage does not name other places."""
    data: DataConfig
    """Where the labelled texts are and how they are read, checked, cleaned, balanced and split (stage 1)."""
    model: ModelConfig = ModelConfig()
    """The pretrained base and the fine-tuning strategy (stage 2)."""
    train: TrainConfig = TrainConfig()
    """How the model is fine-tuned (stage 4)."""
    gate: GateConfig = GateConfig()
    """What a model must reach to be registered (stage 5)."""
    test_cases: TestCasesConfig = TestCasesConfig()
    """Behavioural test cases stage 5 runs and the gate holds per category (both tasks)."""
    fairness: FairnessConfig = FairnessConfig()
    """Fairness between the groups of data.group_column (stage 5, classification)."""
    tracking: TrackingConfig = TrackingConfig()
    """MLflow: the tracking store, the experiment and the registered model."""
    kfp: KfpConfig = KfpConfig()
    """Running on a Kubeflow Pipelines cluster."""
    pii: PiiConfig = PiiConfig()
    """What counts as personal data, in the data and in the prediction log."""
    serve: ServeConfig = ServeConfig()
    """The model server."""
    deploy: DeployConfig = DeployConfig()
    """How a new champion reaches traffic (stage 6)."""
    monitor: MonitorConfig = MonitorConfig()
    """Drift monitoring and retraining (stage 7)."""
    storage: StorageConfig = StorageConfig()
    """Where what outlives a task is kept."""
    tune: TuneConfig = TuneConfig()
    """The hyper-parameter sweep of `lifecycle tune`."""
    generation: GenerationConfig = GenerationConfig()
    """task=generation: the examples' format and rendering, the loss, what stage 5 generates and checks."""

    def checkpoints_uri(self) -> str:
        return self.storage.checkpoints or str(Path(self.work_dir) / "checkpoints")

    def predictions_uri(self) -> str:
        return self.storage.predictions or str(Path(self.work_dir) / "predictions")

    @model_validator(mode="after")
    def _task_defaults(self) -> LifecycleConfig:
        """Each task's own base model and registered model where the config leaves them, and the strategies that
        train a language model's head (its output embeddings): head and adapter train a new classification head."""
        if self.task == "generation":
            if "base" not in self.model.model_fields_set:
                self.model.base = BUNDLED_LLM
            if "registered_model" not in self.tracking.model_fields_set:
                self.tracking.registered_model = "text-generator"
            if self.model.strategy not in GENERATION_STRATEGIES:
                raise ValueError(
                    f"model.strategy={self.model.strategy} trains a classification head; task=generation trains "
                    f"with {', '.join(GENERATION_STRATEGIES)}"
                )
            if self.train.privacy or self.train.class_weights != "none":
                raise ValueError("task=generation: train.privacy and train.class_weights are built for classification")
            if "mode" not in self.deploy.rollout.model_fields_set:
                self.deploy.rollout.mode = "canary"  # a shadow would generate every response twice
            if self.deploy.rollout.mode == "shadow":
                raise ValueError(
                    "deploy.rollout.mode=shadow: a generator's rollout is canary or direct (a shadow would generate "
                    "every response twice, and a second response is judged by no one)"
                )
        self.train = self.train.for_strategy(self.model, self.task)
        return self

    @model_validator(mode="after")
    def _floors_have_cases(self) -> LifecycleConfig:
        if self.test_cases.min_pass_rate is not None and not self.test_cases.path:
            raise ValueError(
                "test_cases.min_pass_rate holds the categories of test_cases.path, which is not set (a built-in "
                "category, robustness/typos, is held by name in test_cases.min_pass_rates)"
            )
        return self

    @model_validator(mode="after")
    def _fairness_has_groups(self) -> LifecycleConfig:
        if self.fairness.max_gap and (self.task != "classification" or not self.data.group_column):
            raise ValueError(
                "fairness.max_gap compares the groups of data.group_column by a classifier's rates: set "
                "data.group_column (task=classification)"
            )
        return self

    @model_validator(mode="after")
    def _private_strategy(self) -> LifecycleConfig:
        if self.train.privacy and self.model.strategy in NOT_PRIVATE:
            raise ValueError(
                f"train.privacy: model.strategy={self.model.strategy} cannot train privately: "
                f"{NOT_PRIVATE[self.model.strategy]}"
            )
        return self

    @model_validator(mode="after")
    def _nodes_share_storage(self) -> LifecycleConfig:
        if self.train.nodes > 1 and "://" not in self.checkpoints_uri():
            raise ValueError(
                f"train.nodes={self.train.nodes} trains in the pods of a Kubeflow Trainer TrainJob, "
                "which share no disk with this task: set storage.checkpoints to a storage URI they all "
                f"reach (s3://, gs://, ..., or file:// on a shared volume), not {self.checkpoints_uri()}"
            )
        return self

    @model_validator(mode="after")
    def _space_names_keys(self) -> LifecycleConfig:
        for key in self.tune.space:
            if config_field(key) is None:
                raise ValueError(f"tune.space: {key!r} is not a key of the config (e.g. train.learning_rate)")
        return self

    @field_validator("name")
    @classmethod
    def _name_is_simple(cls, value: str) -> str:
        if not value.replace("-", "").replace("_", "").isalnum():
            raise ValueError("use letters, digits, '-' and '_' only")
        return value


def config_field(key: str):
    """The pydantic field a dotted key names (train.epochs), or None."""
    section, field_ = LifecycleConfig, None
    for part in key.split("."):
        fields_ = getattr(section, "model_fields", {})
        if part not in fields_:
            return None
        field_ = fields_[part]
        section = field_.annotation
    return field_


def takes_integers(key: str) -> bool:
    """Whether the key's value is a whole number (train.epochs) rather than any number (train.learning_rate)."""
    import typing

    annotation = config_field(key).annotation
    return annotation is int or int in typing.get_args(annotation) and float not in typing.get_args(annotation)
