"""The config explains itself: every key has a description in the schema, `lifecycle config` prints YAML that reads
back as the same config, `--explain KEY` shows a key's value, default, type and meaning, and the docs' configuration
page is generated from the schema. Fast: no model, no MLflow."""

import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from components.config import ConfigError, LifecycleConfig, load_config, validate_config
from components.config.explain import configuration_page, explain_config, explain_key
from components.config.section import Section

BASE = "configs/sms_spam.yaml"
PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def _models(annotation) -> list[type[BaseModel]]:
    """The model classes an annotation holds, inside Optional, lists and mappings too."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models(arg)]


def _sections() -> dict[type[BaseModel], str]:
    """Every section reachable from the config, by the dotted path it is first found at."""
    found, todo = {}, [(LifecycleConfig, "")]
    while todo:
        model, path = todo.pop()
        if model in found:
            continue
        found[model] = path
        for name, field in model.model_fields.items():
            todo += [(inner, f"{path}{name}.") for inner in _models(field.annotation)]
    return found


def _all_subclasses(cls) -> set:
    return {sub for direct in cls.__subclasses__() for sub in (direct, *_all_subclasses(direct))}


def test_every_field_of_every_section_has_a_description():
    sections = _sections()
    assert _all_subclasses(Section) <= set(sections), "a section that the config does not reach"
    missing = [
        f"{path}{name} ({model.__name__})"
        for model, path in sections.items()
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert not missing, f"write an attribute docstring under each of: {', '.join(missing)}"
    undocumented = [model.__name__ for model in sections if not (model.__doc__ or "").strip()]
    assert not undocumented, f"sections without a class docstring: {undocumented}"
    assert sum(len(model.model_fields) for model in sections) >= 150


def test_configuration_page_is_generated_from_the_schema():
    assert PAGE.read_text(encoding="utf-8") == configuration_page(), (
        "docs/configuration.md is out of date: run `python -m components.config.explain > docs/configuration.md`"
    )


def test_configuration_page_has_a_section_per_top_level_section():
    page = configuration_page()
    for name in ("data", "model", "train", "gate", "tracking", "kfp", "pii", "serve", "deploy", "monitor", "tune"):
        assert f"\n## {name}\n" in page
    assert "| `train.epochs` | `3` | Epochs to train at most" in page
    assert "| `data.split.train` | `0.7` |" in page and "| `train.privacy.epsilon` | required |" in page


def test_explain_key_shows_value_default_type_and_meaning():
    cfg = load_config(BASE, ["data.path=x", "train.epochs=5"])
    lines = explain_key(cfg, "train.epochs").splitlines()
    assert lines[0] == "train.epochs"
    fields = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in lines[1:]}
    assert fields["value"] == "5" and fields["default"] == "3"
    assert fields["type"] == "integer >= 1"
    assert fields["meaning"] == LifecycleConfig.model_fields["train"].annotation.model_fields["epochs"].description


def test_explain_key_of_a_section_lists_its_keys():
    cfg = load_config(BASE, ["data.path=x", "model.strategy=lora"])
    text = explain_key(cfg, "train")
    assert text.startswith("train: How stage 4 fine-tunes the model")
    for key in ("train.epochs", "train.batch_size", "train.privacy", "train.privacy.epsilon"):
        assert f"\n{key}" in text
    assert "default: 32 for strategy lora" in text  # the resolved default, not the schema's null
    assert "one of full, partial, lora, head, qlora, peft, adapter" in explain_key(cfg, "model.strategy")


def test_an_unknown_key_is_an_error_naming_the_nearest():
    cfg = load_config(BASE, ["data.path=x"])
    with pytest.raises(ConfigError, match="train.epoch") as err:
        explain_key(cfg, "train.epoch")
    assert "train.epochs" in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["data.path=x", "train.epochs=5"],
        [
            "data.path=x",
            "model.strategy=lora",
            "model.lora.target_modules=all-linear",
            "train.privacy={epsilon: 8}",
            "data.pii=off",
            "data.citation='a: b # c'",
            "tune.space={train.learning_rate: {low: 1e-5, high: 1e-3, log: true}, model.lora.r: null}",
        ],
    ],
)
def test_explained_config_reads_back_as_the_same_config(overrides):
    cfg = load_config(BASE, overrides)
    text = explain_config(cfg)
    assert "  # Epochs to train at most" in text
    assert validate_config(yaml.safe_load(text)).model_dump() == cfg.model_dump()


def test_explained_config_gives_the_default_only_where_the_value_differs():
    text = explain_config(load_config(BASE, ["data.path=x", "train.epochs=5"]))
    assert "  # Epochs to train at most; early stopping may end training sooner (default 3).\n  epochs: 5\n" in text
    assert "  # The L2 norm the gradient of each step is clipped to.\n  max_grad_norm: 1.0\n" in text
