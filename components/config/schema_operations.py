"""What happens around training: the gate (`gate`), MLflow (`tracking`), the cluster (`kfp`), storage URIs
(`storage`) and drift monitoring (`monitor`). Serving and rollouts are in schema_serving.py, the sweep in
schema_sweep.py."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.config.section import Section


class GateConfig(Section):
    """What a trained model must reach on the test split in stage 5 before it is registered and may be deployed."""

    min_accuracy: float = Field(0.9, ge=0, le=1)
    """The lowest test accuracy (0..1) that passes."""
    min_macro_f1: float = Field(0.0, ge=0, le=1)
    """The lowest test macro-averaged F1 (0..1) that passes."""
    compare_with_champion: bool = True
    """Whether the model is also judged against the registered model's champion by champion_rule (the first model,
    with no champion yet, is not)."""
    champion_rule: Literal["not_worse", "better"] = "not_worse"
    """Against the champion, on the same test texts, an exact McNemar test on the texts where the two disagree:
    not_worse fails a challenger only when it is worse at this significance level; better passes it only when it
    is better at that level."""
    significance: float = Field(0.05, gt=0, lt=1)
    """The significance level of the McNemar tests against the champion, in stage 5 and in a rollout's decision."""
    beat_baseline: bool = False
    """Whether the model must reach a higher test accuracy than the TF-IDF + logistic regression baseline."""
    min_slice_accuracy: float | None = Field(None, ge=0, le=1)
    """A floor (0..1) for the accuracy of the worst slice (by text length, source or data.group_column). None: the
    slices are reported but not judged."""
    min_slice_size: int = Field(20, ge=1)
    """Slices with fewer test texts than this are reported but not judged (their accuracy is noise)."""


class TrackingConfig(Section):
    """Where runs, metrics, artifacts and registered models go: MLflow."""

    uri: str | None = None
    """The MLflow tracking URI; the environment variable MLFLOW_TRACKING_URI wins over it. None: a SQLite store,
    work_dir/mlflow.db."""
    artifact_location: str | None = None
    """Where a new experiment keeps its artifacts. None: the tracking server's own artifact store, or
    work_dir/mlartifacts with the local SQLite store."""
    experiment: str = "lifecycle"
    """The MLflow experiment that the runs of the pipeline's stages are logged to."""
    registered_model: str = "text-classifier"
    """The registered model that a model passing the gate becomes a version of; its champion is what the gate
    compares with and what is served."""


class GpuConfig(Section):
    """kfp.gpu: the accelerators a cluster task that trains asks for (each node of a TrainJob too)."""

    accelerator: str = "nvidia.com/gpu"
    """The Kubernetes resource name of the accelerator."""
    count: int = Field(1, ge=0)
    """Accelerators per training task (per node of a TrainJob); 0: none, training runs on CPU."""


class TrainJobConfig(Section):
    """The Kubeflow Trainer TrainJob of a fine-tuning on several nodes (train.nodes > 1)."""

    runtime: str = "torch-distributed"
    """The ClusterTrainingRuntime (of the torch framework) the job runs on."""
    namespace: str | None = None
    """The Kubernetes namespace to submit the job in. None: the fine-tune task's own namespace."""
    storage_secret: str | None = "lifecycle-s3"
    """A Secret whose keys give the job's pods the bucket's credentials (the keys of infra/README.md, step 5; each
    optional). None: the pods' service account reaches the bucket (IRSA, Workload Identity)."""
    deadline_hours: float | None = Field(None, gt=0)
    """Hours after which a job still running fails. None: no deadline."""
    poll_seconds: float = Field(20, gt=0)
    """How often, in seconds, the fine-tune task reads the job's status."""


class KfpConfig(Section):
    """How the pipelines run on a Kubeflow Pipelines cluster: the image, the GPUs, the TrainJob of several nodes."""

    image: str = "llm-lifecycle:0.2.0"
    """The container image of the tasks, built from infra/Dockerfile; push it where the cluster pulls from."""
    gpu: GpuConfig = GpuConfig()
    """The accelerators a training task asks for."""
    trainjob: TrainJobConfig = TrainJobConfig()
    """The Kubeflow Trainer TrainJob of a fine-tuning on several nodes."""


class StorageConfig(Section):
    """What outlives a task or a process, at storage URIs (on a cluster: an object-store prefix)."""

    checkpoints: str | None = None
    """Where fine-tuning keeps its checkpoints, for --resume and for a TrainJob's pods. None: work_dir/checkpoints."""
    predictions: str | None = None
    """The prediction log that serving writes and monitoring reads. None: work_dir/predictions."""


class MonitorConfig(Section):
    """Stage 7, monitoring: the drift check of served texts against the training reference, alerts, retraining."""

    current: str | None = None
    """A file of texts to check for drift. None: the prediction log's window."""
    window_hours: float = Field(24, gt=0)
    """The prediction log's window checked for drift: its last N hours."""
    min_window: int = Field(100, ge=10)
    """The fewest texts to check for a verdict; with fewer there is none."""
    reference_size: int = Field(1000, ge=50)
    """Training texts kept (a seeded sample) at deployment as the drift reference."""
    drift_share: float = Field(0.5, gt=0, le=1)
    """Drift when at least this share (0..1) of the features drifted."""
    p_value: float = Field(0.05, gt=0, lt=1)
    """A text descriptor or the predictions drifted when their test's p-value is below this (K-S and chi-square
    tests)."""
    text_quantile: float = Field(0.95, gt=0.5, lt=1)
    """Text content drifted when a domain classifier's ROC AUC is above this quantile of a random classifier's."""
    embedding_auc: float = Field(0.55, gt=0.5, lt=1)
    """Embeddings drifted when a domain classifier's ROC AUC is above this."""
    webhook_url: str | None = None
    """A Slack or Teams incoming webhook that drift and rollout alerts are posted to. None: alerts are only written
    to files and MLflow."""
    cooldown_hours: float = Field(24, ge=0)
    """At most one retraining is started per this many hours."""
    retraining_timeout_hours: float = Field(6, gt=0)
    """A retraining still running after this many hours counts as crashed."""
    claim_settle_seconds: float = Field(2, ge=0)
    """A claimer re-reads the claims this long after recording its own: longer than a claim takes to reach the
    tracking server plus the clock skew between monitor pods (monitoring/retraining.py)."""
