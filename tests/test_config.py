import pytest

from components.config import ConfigError, load_config

BASE = "configs/sms_spam.yaml"


def test_default_config_is_valid_and_set_overrides_by_dotted_path():
    cfg = load_config(BASE, ["data.path=/data/x.tsv", "train.epochs=2", "model.lora.r=4", "data.labels=[a, b]"])
    assert cfg.data.path == "/data/x.tsv"
    assert cfg.train.epochs == 2 and isinstance(cfg.train.epochs, int)
    assert cfg.model.lora.r == 4
    assert cfg.data.labels == ["a", "b"]


@pytest.mark.parametrize(
    "override, named",
    [
        ("train.epoch=2", "train.epoch"),  # unknown key (typo)
        ("train.epochs=zero", "train.epochs"),  # bad value
        ("model.strategy=half", "model.strategy"),  # not one of the strategies
        ("data.split.train=0.9", "data.split"),  # splits must sum to 1
        ("train.learning_rate=-1", "train.learning_rate"),
    ],
)
def test_bad_config_is_a_clear_error_naming_the_key(override, named):
    with pytest.raises(ConfigError) as err:
        load_config(BASE, [override])
    assert named in str(err.value)
    assert BASE in str(err.value)


def test_set_without_equals_sign_is_rejected():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(BASE, ["train.epochs"])


def test_batch_size_and_learning_rate_default_per_strategy_unless_set():
    from components.config import STRATEGY_DEFAULTS

    for strategy, (batch_size, learning_rate) in STRATEGY_DEFAULTS.items():
        cfg = load_config(BASE, [f"model.strategy={strategy}"])
        assert (cfg.train.batch_size, cfg.train.learning_rate) == (batch_size, learning_rate)
    cfg = load_config(BASE, ["model.strategy=lora", "train.batch_size=8", "train.learning_rate=5e-4"])
    assert (cfg.train.batch_size, cfg.train.learning_rate) == (8, 5e-4)
    # The resolved values survive the trip through JSON to a KFP component.
    assert type(cfg).model_validate_json(cfg.model_dump_json()).train == cfg.train


def test_full_fine_tuning_trains_without_dropout_unless_told():
    assert load_config(BASE, []).model.dropout == 0.0
    assert load_config(BASE, ["model.strategy=lora"]).model.dropout is None  # the base model's own rates
    assert load_config(BASE, ["model.dropout=null"]).model.dropout is None
    cfg = load_config(BASE, ["model.strategy=partial", "model.dropout=0.2"])
    assert cfg.model.dropout == 0.2
    assert type(cfg).model_validate_json(cfg.model_dump_json()).model == cfg.model
