"""The one typed configuration of a lifecycle run, validated at the edge before any stage runs.

section.py: what every section shares; schema.py: the whole config, its sections in schema_data.py,
schema_training.py, schema_operations.py, schema_serving.py and schema_sweep.py, each key with its description;
reading.py: the YAML file and `--set`; explain.py: `lifecycle config` and the docs' configuration page. What the rest
of the project uses is named here."""

from components.config.reading import apply_override, load_config, set_key, validate_config
from components.config.schema import LifecycleConfig, config_field, takes_integers
from components.config.schema_data import DataConfig, PiiConfig, SplitConfig
from components.config.schema_operations import GateConfig, KfpConfig, MonitorConfig, StorageConfig, TrackingConfig
from components.config.schema_serving import DeployConfig, RolloutConfig, ServeConfig
from components.config.schema_sweep import Distribution, TuneConfig
from components.config.schema_training import (
    STRATEGY_DEFAULTS,
    AdapterConfig,
    LoraConfig,
    ModelConfig,
    PeftMethodConfig,
    PrivacyConfig,
    TrainConfig,
    resolved_hyperparameters,
)
from components.config.section import ConfigError

__all__ = [
    "STRATEGY_DEFAULTS",
    "AdapterConfig",
    "ConfigError",
    "DataConfig",
    "DeployConfig",
    "Distribution",
    "GateConfig",
    "KfpConfig",
    "LifecycleConfig",
    "LoraConfig",
    "ModelConfig",
    "MonitorConfig",
    "PeftMethodConfig",
    "PiiConfig",
    "PrivacyConfig",
    "RolloutConfig",
    "ServeConfig",
    "SplitConfig",
    "StorageConfig",
    "TrackingConfig",
    "TrainConfig",
    "TuneConfig",
    "apply_override",
    "config_field",
    "load_config",
    "resolved_hyperparameters",
    "set_key",
    "takes_integers",
    "validate_config",
]
