"""What every section of the config shares, and the error of a config that cannot run."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from components.errors import LifecycleError


class ConfigError(LifecycleError):
    """A configuration that cannot run: names the file, the key and what was expected."""


class Section(BaseModel):
    # Unknown keys are mistakes (a typo would silently fall back to a default); a field's docstring is its
    # description, which `lifecycle config --explain` and the docs' configuration page show.
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), use_attribute_docstrings=True)
