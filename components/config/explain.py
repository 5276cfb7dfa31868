"""The config explaining itself, from the schema's own field descriptions: `lifecycle config` (the resolved config as
commented YAML; one key or section in detail) and the docs' configuration page.

`python -m components.config.explain > docs/configuration.md` regenerates the page."""

from __future__ import annotations

import difflib
import inspect
import json
import math
import textwrap
import types
import typing

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from components.config.schema import LifecycleConfig
from components.config.schema_training import STRATEGY_DROPOUT
from components.config.section import ConfigError

WIDTH = 118
REQUIRED = object()  # the default of a key the config must give
BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
SCALARS = {int: "integer", float: "number", str: "text", bool: "true or false", type(None): "null"}

# Keys whose default is null in the schema but which a validator fills in from the strategy (schema_training.py):
# what a key left out becomes in this config.
RESOLVED_DEFAULTS = {
    "train.batch_size": lambda cfg: cfg.model.training_defaults(cfg.task)[0],
    "train.learning_rate": lambda cfg: cfg.model.training_defaults(cfg.task)[1],
    "model.dropout": lambda cfg: STRATEGY_DROPOUT.get(cfg.model.strategy),
}


def section_of(annotation) -> type[BaseModel] | None:
    """The section a field holds: its annotation a model class, possibly inside Optional; else None."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def config_keys(model: type[BaseModel] = LifecycleConfig, prefix: str = "") -> dict[str, FieldInfo]:
    """Every dotted key of the config (sections and the keys inside them), in the schema's order, with its field."""
    found = {}
    for name, field in model.model_fields.items():
        found[prefix + name] = field
        section = section_of(field.annotation)
        if section is not None:
            found |= config_keys(section, f"{prefix}{name}.")
    return found


def yaml_literal(value) -> str:
    """A value as one line of YAML that reads back the same: 3, null, true, [a, b], {low: 0.1, high: 1.0}."""
    value = _plain(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, allow_unicode=True, sort_keys=False)
    text = text.removesuffix("\n").removesuffix("\n...")
    return json.dumps(value) if "\n" in text else text  # JSON is YAML, and keeps a line break on one line


def _plain(value):
    """Models as mappings of the keys they set, all the way down."""
    if isinstance(value, BaseModel):
        return _plain(value.model_dump(exclude_defaults=True))
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _doc(model: type[BaseModel]) -> str:
    return " ".join(inspect.cleandoc(model.__doc__ or "").split())


def _description(field: FieldInfo) -> str:
    return " ".join((field.description or "").split())


def _default(cfg: LifecycleConfig | None, key: str, field: FieldInfo) -> tuple[object, str]:
    """What a key left out becomes (in this config, when one is given), and how to show it."""
    if cfg is not None and key in RESOLVED_DEFAULTS:
        value = RESOLVED_DEFAULTS[key](cfg)
        strategy = cfg.model.strategy + (f" {cfg.model.peft.method}" if cfg.model.peft else "")
        return value, f"{yaml_literal(value)} for strategy {strategy}"
    if field.is_required():
        return REQUIRED, "required"
    value = field.get_default(call_default_factory=True)
    return value, yaml_literal(value)


def type_text(field: FieldInfo) -> str:
    """The field's type and constraints in words: `integer >= 1, or null`, `one of full, partial, lora, ...`."""
    bounds = [f"{sign} {getattr(m, name)}" for m in field.metadata for name, sign in BOUNDS if hasattr(m, name)]
    items = [m.min_length for m in field.metadata if hasattr(m, "min_length")]
    members = _members(field.annotation)
    parts = []
    for member in members:
        text = _annotation_text(member)
        if member in (int, float) and bounds:
            text += " " + " and ".join(bounds)
        elif typing.get_origin(member) is list and items:
            text += f", at least {items[0]} item{'s' if items[0] != 1 else ''}"
        parts.append(text)
    return ", or ".join(parts)


def _members(annotation) -> list:
    """The members of a union (None last), or the annotation alone."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = list(typing.get_args(annotation))
        return sorted(members, key=lambda member: member is type(None))
    return [annotation]


def _annotation_text(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in SCALARS:
        return SCALARS[annotation]
    if origin is typing.Literal:
        return "one of " + ", ".join(yaml_literal(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_annotation_text(member) for member in _members(annotation))
    if origin is list:
        inner = _annotation_text(args[0])
        return f"list of {inner if ' ' not in inner else f'({inner})'}"
    if origin is dict:
        return f"mapping of {_annotation_text(args[0])} to ({_annotation_text(args[1])})"
    if origin is typing.Annotated:  # a constrained number, e.g. a share (0..1)
        constraints = [c for arg in args[1:] for c in getattr(arg, "metadata", [arg])]  # a Field's, or bare ones
        bounds = [f"{sign} {getattr(c, name)}" for c in constraints for name, sign in BOUNDS if hasattr(c, name)]
        return " ".join([_annotation_text(args[0]), " and ".join(bounds)]).strip()
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"section ({', '.join(annotation.model_fields)})"
    return getattr(annotation, "__name__", str(annotation))


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}" for line in textwrap.wrap(text, WIDTH - len(indent) - 2, break_on_hyphens=False)]


def explain_config(cfg: LifecycleConfig) -> str:
    """The config a run uses (every default filled in, every strategy default resolved) as YAML to read and paste
    back: each key with its value, above it a comment with its meaning, and its default where the value differs."""
    header = (
        "The resolved configuration: every key with the value a run uses. Above each key its meaning, and its "
        "default where the value differs from it. Saved to a file, it is a config as it stands (--config FILE)."
    )
    return "\n".join(_comment(header, "") + [""] + _yaml_lines(cfg, cfg, "", "")) + "\n"


def _yaml_lines(cfg: LifecycleConfig, section: BaseModel, prefix: str, indent: str) -> list[str]:
    lines = []
    for name, field in type(section).model_fields.items():
        key, value = prefix + name, getattr(section, name)
        nested = section_of(field.annotation) is not None and isinstance(value, BaseModel)
        default, shown = _default(cfg, key, field)
        meaning = _description(field).removesuffix(".")
        differs = default is not REQUIRED and value != default and not (nested and default is not None)
        if nested and not indent:
            lines.append("")
        lines += _comment(f"{meaning} (default {shown})." if differs else f"{meaning}.", indent)
        if nested:
            lines.append(f"{indent}{name}:")
            lines += _yaml_lines(cfg, value, f"{key}.", indent + "  ")
        else:
            lines.append(f"{indent}{name}: {yaml_literal(value)}")
    for name, value in (section.model_extra or {}).items():  # a peft method's own arguments
        lines.append(f"{indent}{name}: {yaml_literal(value)}")
    return lines


def explain_key(cfg: LifecycleConfig, key: str) -> str:
    """One key of the config in detail (its value here, default, type and constraints, meaning); for a section,
    what the section is for and then each of its keys so."""
    keys = config_keys()
    if key not in keys:
        nearest = difflib.get_close_matches(key, list(keys), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(nearest)}?" if nearest else "`lifecycle config` shows every key"
        raise ConfigError(f"{key}: not a key of the config; {hint}")
    field = keys[key]
    section = section_of(field.annotation)
    lines = _section_lines(cfg, key, field, section) if section else _key_lines(cfg, key, field)
    return "\n".join(lines) + "\n"


def _value_text(cfg: LifecycleConfig, key: str) -> str:
    node, path = cfg, []
    for part in key.split("."):
        if node is None:
            return f"(unset: {'.'.join(path)} is null)"
        node, path = getattr(node, part), [*path, part]
    return yaml_literal(node)


def _key_lines(cfg: LifecycleConfig, key: str, field: FieldInfo, title: bool = True) -> list[str]:
    rows = [
        ("value", _value_text(cfg, key)),
        ("default", _default(cfg, key, field)[1]),
        ("type", type_text(field)),
        ("meaning", _description(field)),
    ]
    lines = [key] if title else []
    for label, text in rows:
        lines += textwrap.wrap(
            text or "-",
            WIDTH,
            initial_indent=f"  {label + ':':<9}",
            subsequent_indent=" " * 11,
            break_on_hyphens=False,
        )
    return lines


def _section_lines(cfg: LifecycleConfig, key: str, field: FieldInfo, section: type[BaseModel]) -> list[str]:
    doc = _doc(section)
    title = doc if doc.startswith(key) else f"{key}: {doc}"  # some docstrings start with their key already
    lines = textwrap.wrap(title, WIDTH, subsequent_indent="  ", break_on_hyphens=False)
    if _optional(field):  # a section that may be null: its own value first
        lines += _key_lines(cfg, key, field, title=False)
    for name, child in section.model_fields.items():
        child_key, child_section = f"{key}.{name}", section_of(child.annotation)
        lines.append("")
        if child_section:
            lines += _section_lines(cfg, child_key, child, child_section)
        else:
            lines += _key_lines(cfg, child_key, child)
    return lines


PAGE_INTRO = """\
# Configuration

<!-- Generated from the config schema (components/config/schema*.py) by
`python -m components.config.explain > docs/configuration.md`: change a key's description there, not here. -->

A run is configured by one YAML file (`configs/sms_spam.yaml` is one) of the sections below; a key the file leaves
out takes its default. Any key can be set on the command line by its dotted name, after the file is read:
`--set train.epochs=5`, the value read as YAML (`2`, `true`, `null`, `[a, b]`), as often as needed. The whole config
is validated before any stage runs: an unknown key or a bad value stops the command with an error naming the key.

`lifecycle config` prints the resolved config (the file, every `--set` and every default) as commented YAML,
and `lifecycle config --explain KEY` one key (`train.epochs`) or section (`train`) in detail: its value, default,
type and meaning. See [The `lifecycle` command](cli.md).

Keys whose default depends on the strategy (`train.batch_size`, `train.learning_rate`, `model.dropout`) show
`null` here; `lifecycle config` shows what they resolve to."""


def configuration_page() -> str:
    """The Markdown of docs/configuration.md: per top-level section a `## name` heading, what it is for and a table
    of its keys (nested sections under `### dotted.name`)."""
    top = {name: field for name, field in LifecycleConfig.model_fields.items() if not section_of(field.annotation)}
    parts = [PAGE_INTRO, "## Top-level keys", _doc(LifecycleConfig), _table(top, "")]
    for name, field in LifecycleConfig.model_fields.items():
        section = section_of(field.annotation)
        if section:
            parts += _page_section(name, section, "##")
    return "\n\n".join(part for part in parts if part) + "\n"


def _page_section(key: str, section: type[BaseModel], level: str) -> list[str]:
    fields = section.model_fields
    rows = {name: field for name, field in fields.items() if not section_of(field.annotation) or _optional(field)}
    parts = [f"{level} {key}", _doc(section), _table(rows, f"{key}.")]
    for name, field in fields.items():
        if section_of(field.annotation):
            parts += _page_section(f"{key}.{name}", section_of(field.annotation), "###")
        elif _mapped_section(field.annotation):  # a mapping of sections (tune.space): what each entry holds
            entry = _page_section(f"{key}.{name}.KEY", _mapped_section(field.annotation), "###")
            parts += [entry[0], f"Each value of `{key}.{name}`, by its key (KEY). {entry[1]}", *entry[2:]]
    return parts


def _optional(field: FieldInfo) -> bool:
    return not field.is_required() and field.get_default() is None


def _mapped_section(annotation) -> type[BaseModel] | None:
    """The section each value of a mapping holds (tune.space: dict[str, Distribution | None]), or None."""
    return section_of(typing.get_args(annotation)[1]) if typing.get_origin(annotation) is dict else None


def _table(fields: dict[str, FieldInfo], prefix: str) -> str:
    if not fields:
        return ""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for name, field in fields.items():
        shown = _default(None, prefix + name, field)[1]
        default = shown if shown == "required" else f"`{shown}`"
        meaning = _description(field).replace("<", "&lt;").replace(">", "&gt;")
        rows.append(
            "| " + " | ".join(cell.replace("|", "\\|") for cell in (f"`{prefix}{name}`", default, meaning)) + " |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(configuration_page(), end="")
