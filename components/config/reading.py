"""Reading a config: the YAML file, `--set key=value` overrides by dotted key, validation whose errors name the key."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from components.config.schema import LifecycleConfig
from components.config.section import ConfigError


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
