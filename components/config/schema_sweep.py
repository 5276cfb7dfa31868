"""The hyper-parameter sweep (`tune`): an Optuna study and the ranges of its search space (Distribution)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.config.section import Section


class Distribution(Section):
    """One hyper-parameter's range, low..high (log scale with `log`; whole numbers for a key that takes them), or a
    list of choices."""

    low: float | None = None
    """The range's lowest value. None: choices are given instead."""
    high: float | None = None
    """The range's highest value. None: choices are given instead."""
    log: bool = False
    """Whether the range is searched on a log scale (low must then be above 0)."""
    step: float | None = Field(None, gt=0)
    """The spacing of the values tried in the range. None: any value (any whole number for a key that takes them)."""
    choices: list[str | int | float | bool | None] | None = None
    """The values to choose from, instead of a range. None: low and high are given instead."""

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


SEARCHABLE = ("model.", "train.")  # what a trial may change: how the model is trained, never the data or the gate
NOT_SEARCHABLE = ("train.device", "train.nodes", "train.processes", "train.threads", "model.base", "model.strategy")


class TuneConfig(Section):
    """`lifecycle tune`: an Optuna study over stage 4's hyper-parameters, each trial a nested MLflow run of the
    sweep's run; the best trial by validation loss goes through stages 5-7 as a run's model does."""

    trials: int = Field(16, ge=1)
    """Trials that finish (complete, pruned or failed; an interrupted one is tried again and not counted), over all
    workers and resumes."""
    timeout_minutes: float | None = Field(None, gt=0)
    """The longest a sweep run lasts, in minutes (a resume has its own). None: no limit."""
    parallel: int = Field(1, ge=1)
    """Workers at once: pods on a cluster, each with its GPU; processes on one machine, sharing its cores. A worker
    starts no trial once the study has its budget, so at most parallel - 1 trials more may finish."""
    pruner: Literal["median", "successive_halving", "none"] = "median"
    """What stops an unpromising trial early, by its validation loss after each epoch: Optuna's median pruner, its
    successive-halving pruner, or none."""
    prune_after_trials: int = Field(3, ge=0)
    """The median pruner judges no trial before this many trials finished."""
    storage: str | None = None
    """The study's database. None: optuna.db beside a SQLite tracking store; on a cluster, a PostgreSQL database of
    its own (postgresql://USER:PASSWORD@HOST/optuna: Optuna's tables and MLflow's would collide in one)."""
    space: dict[str, Distribution | None] = {}
    """Overrides of the strategy's default space (components/sweep/space.py), by the config key they set; a key set
    to null is not searched."""

    @field_validator("space")
    @classmethod
    def _searchable_keys(cls, space: dict) -> dict:
        for key in space:
            if not key.startswith(SEARCHABLE) or key in NOT_SEARCHABLE:
                raise ValueError(
                    f"{key!r}: a trial can change the keys under model. and train. but {', '.join(NOT_SEARCHABLE)}"
                )
        return space
