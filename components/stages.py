"""The seven stages, in one table that the pipelines, the console and the adapters read.

Stage NAME lives in the package components/NAME/: its core (`core.py`; stage 7's is monitoring/core.py, beside the
rest of monitoring), its MLflow adapter (`adapter.py`) and its KFP component (`component.py`), and the entry point of
each is the function NAME. Its MLflow run is `run_name`."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    number: int
    name: str
    wants_gpu: bool  # the task asks for kfp.gpu: it trains, or it must describe and evaluate where training runs

    @property
    def run_name(self) -> str:
        """The stage's nested MLflow run and the label of its printed lines: `4-fine-tune`."""
        return f"{self.number}-{self.task_name}"

    @property
    def task_name(self) -> str:
        """KFP's name for the component's task: `fine-tune`."""
        return self.name.replace("_", "-")

    @property
    def core_module(self) -> str:
        """The module of the stage's plain-Python core."""
        return "monitoring.core" if self.name == "monitor" else f"components.{self.name}.core"

    def component(self):
        """The KFP component (imports kfp)."""
        return getattr(importlib.import_module(f"components.{self.name}.component"), self.name)


DATA = Stage(1, "data", wants_gpu=False)
MODEL = Stage(2, "model", wants_gpu=False)
ENVIRONMENT = Stage(3, "environment", wants_gpu=True)
FINE_TUNE = Stage(4, "fine_tune", wants_gpu=True)
EVALUATE = Stage(5, "evaluate", wants_gpu=True)
DEPLOY = Stage(6, "deploy", wants_gpu=False)
MONITOR = Stage(7, "monitor", wants_gpu=False)
STAGES = (DATA, MODEL, ENVIRONMENT, FINE_TUNE, EVALUATE, DEPLOY, MONITOR)
# Stage 4 as a search (`lifecycle tune`): its workers' component; the study and the selection are sweep_study and
# sweep_select beside it.
SWEEP = Stage(4, "sweep", wants_gpu=True)
TRAFFIC_CHECK = "drift-check"  # stage 7 on served traffic (the monitor pipeline), outside any training run
ROLLOUT_CHECK = "rollout-check"  # the monitor pipeline's decision on a running rollout (monitoring/rollout.py)


def by_task_name(task_name: str) -> Stage | None:
    return next((stage for stage in (*STAGES, SWEEP) if stage.task_name == task_name), None)
