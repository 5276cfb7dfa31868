"""A decision as a value and the reason for it: what stage 4's placement, parity, the served format and the gate
return, so that a component only logs and emits it and a test checks both branches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Decision(Generic[T]):
    value: T
    reason: str
