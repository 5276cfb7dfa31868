"""The layout a newcomer walks: each stage one hop from its name; the decisions stages take, both branches; models
registered before the layout changed still load."""

import importlib
from pathlib import Path

import pytest

from components.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_each_stage_has_its_core_adapter_and_component_under_its_name(stage):
    for module in (stage.core_module, f"components.{stage.name}.adapter"):
        assert callable(getattr(importlib.import_module(module), stage.name)), module
    assert stage.component().component_spec.name == stage.task_name
    assert stage.run_name == f"{stage.number}-{stage.task_name}"


def test_the_table_orders_the_stages_and_names_those_that_want_a_gpu():
    assert [s.number for s in STAGES] == list(range(1, 8))
    assert [s.run_name for s in STAGES if s.wants_gpu] == ["3-environment", "4-fine-tune", "5-evaluate"]


@pytest.mark.parametrize(
    "nodes, processes, device, gpus, where, ranks",
    [
        (1, None, "cpu", 0, "in_process", 1),
        (1, None, "cuda", 1, "in_process", 1),
        (1, 2, "cpu", 0, "processes", 2),
        (1, None, "cuda", 4, "processes", 4),  # one rank per GPU of the node
        (1, None, "cpu", 4, "in_process", 1),  # GPUs asked for but training on the CPU
        (2, None, "cuda", 2, "train_job", 2),
        (3, 1, "cpu", 0, "train_job", 1),
    ],
)
def test_where_stage_4_runs(nodes, processes, device, gpus, where, ranks):
    from components.fine_tune.placement import decide_placement

    decision = decide_placement(nodes, processes, device, gpus)
    assert (decision.value.where, decision.value.processes) == (where, ranks)
    assert decision.reason


@pytest.mark.parametrize(
    "diff, agreement, passed", [(2e-6, 1.0, True), (1e-4, 1.0, True), (2e-4, 1.0, False), (1e-6, 0.99, False)]
)
def test_parity_needs_every_prediction_and_every_logit_close(diff, agreement, passed):
    from components.deploy.core import decide_parity

    decision = decide_parity(diff, agreement, 257)
    assert decision.value is passed
    assert ("passed" if passed else "failed") in decision.reason and "257 test texts" in decision.reason


@pytest.mark.parametrize(
    "fp32, int8, served",
    [(0.9922, 0.9883, "int8"), (0.9922, 0.9922, "int8"), (0.9922, 0.98, "fp32"), (0.90, 0.91, "int8")],
)
def test_int8_is_served_only_within_half_a_point_of_fp32(fp32, int8, served):
    from components.deploy.core import choose_served_format

    decision = choose_served_format(fp32, int8)
    assert decision.value == served and f"so {served} is served" in decision.reason


def test_a_crashed_rank_or_a_failed_job_is_a_run_failure_not_a_users_mistake():
    from components.deploy.core import ParityError
    from components.errors import LifecycleError, RunFailure
    from components.fine_tune.torchrun import DistributedTrainingError
    from components.fine_tune.trainjob import TrainJobError, TrainJobRefused

    for failure in (DistributedTrainingError, TrainJobError, ParityError):
        assert issubclass(failure, RunFailure) and not issubclass(failure, LifecycleError)
    assert issubclass(TrainJobRefused, LifecycleError)  # no Kubernetes API, no right to create: the user's to fix


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["onnx", "pytorch"])
def test_python_models_pickled_before_the_stage_layout_still_load(kind, tiny_run, tiny_bundle, tmp_path):
    """A registered version's python_model.pkl names its class by module path (components.pyfunc_model): the
    pickles in tests/data were written by the code before the stages moved into packages."""
    import shutil

    import mlflow.pyfunc
    import pandas as pd

    from components.pyfunc_model import OnnxTextClassifier, TextClassifier

    model, artifacts = (
        (OnnxTextClassifier(), {"bundle": str(tiny_bundle / "bundle")})
        if kind == "onnx"
        else (TextClassifier(), {"model_dir": str(tiny_run[1])})
    )
    path = tmp_path / "model"
    mlflow.pyfunc.save_model(path, python_model=model, artifacts=artifacts)
    shutil.copy(ROOT / "tests" / "data" / f"python_model_{kind}_before_issue_20.pkl", path / "python_model.pkl")
    out = mlflow.pyfunc.load_model(str(path)).predict(pd.DataFrame({"text": ["win free cash now", "see you at lunch"]}))
    assert list(out.columns) == ["label", "probabilities"] and set(out["label"]) <= {"ham", "spam"}


def test_no_hand_off_file_is_named_outside_the_hand_off_module():
    import re

    from components import handoff

    names = [
        value
        for key, value in vars(handoff).items()
        if key.isupper() and isinstance(value, str) and re.search(r"\.(json|parquet|html|md|onnx)$", value)
    ]
    names += ["train.parquet", "val.parquet", "test.parquet"]
    for folder in ("components", "pipelines", "monitoring"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "handoff.py":
                continue
            text = path.read_text()
            assert not [name for name in names if f'"{name}"' in text or f"'{name}'" in text], path
