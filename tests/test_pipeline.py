"""The pipeline through the `lifecycle` command: compiled for a cluster, and run locally through kfp.local."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import as_args, compile_pipelines, make_texts, stop_at_line, tiny_settings

from pipelines.cli import main


def test_compile_writes_yaml_that_kfp_loads_back_with_the_gpu_request(tmp_path):
    from kfp import components

    out, monitor_out = tmp_path / "pipeline.yaml", tmp_path / "monitor.yaml"
    assert (
        compile_pipelines(["data.path=x.tsv", "kfp.gpu.count=2"], "-o", str(out), "--monitor-output", str(monitor_out))
        == 0
    )
    loaded = components.load_component_from_file(str(out))
    assert loaded.name == "sms-spam-training"
    monitor = components.load_component_from_file(str(monitor_out))
    assert monitor.name == "sms-spam-monitor"
    monitor_spec = yaml.safe_load(monitor_out.read_text())
    assert "exec-monitor-traffic" in monitor_spec["deploymentSpec"]["executors"]
    assert "exec-fine-tune" in monitor_spec["deploymentSpec"]["executors"]  # the training pipeline, nested
    spec = yaml.safe_load(out.read_text())
    resources = spec["deploymentSpec"]["executors"]["exec-fine-tune"]["container"]["resources"]
    assert resources["accelerator"]["resourceCount"] == "2"
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert "resources" not in spec["deploymentSpec"]["executors"]["exec-data"]["container"]
    assert spec["deploymentSpec"]["executors"]["exec-fine-tune"]["container"]["image"] == "llm-lifecycle:0.2.0"
    # The compiled pipelines hold no path of the machine that compiled them: each pod has its own disk.
    for text in (out.read_text(), monitor_out.read_text()):
        assert str(Path.cwd()) not in text and str(tmp_path) not in text
    config = json.loads(spec["root"]["inputDefinitions"]["parameters"]["config_json"]["defaultValue"])
    assert config["work_dir"] == "work"  # relative: each task's own scratch space


def test_on_several_nodes_the_fine_tune_task_asks_for_no_gpu_its_trainjob_does(tmp_path):
    out = tmp_path / "pipeline.yaml"
    settings = ["data.path=s3://b/x.tsv", "kfp.gpu.count=2", "train.nodes=2", "storage.checkpoints=s3://b/checkpoints"]
    assert compile_pipelines(settings, "-o", str(out)) == 0
    executors = yaml.safe_load(out.read_text())["deploymentSpec"]["executors"]
    assert "resources" not in executors["exec-fine-tune"]["container"]
    assert executors["exec-evaluate"]["container"]["resources"]["accelerator"]["resourceCount"] == "2"


@pytest.fixture
def run_args(tmp_path, tiny_bert, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    make_texts(240).to_csv(tmp_path / "texts.csv", index=False)

    def args(*overrides):
        return ["run", *as_args(tiny_settings(tmp_path / "work", tmp_path / "texts.csv", tiny_bert, *overrides))]

    return args


def mlflow_client(tmp_path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    return mlflow.MlflowClient()


def stage_runs(client, parent):
    experiment = client.get_experiment_by_name("sms-spam").experiment_id
    return client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


@pytest.mark.slow
def test_lifecycle_run_tracks_every_stage_registers_promotes_and_keeps_the_champion_on_a_failed_gate(
    run_args, tmp_path, capsys
):
    """The first run is stopped in stage 1 and resumed with the command it printed: a resumed run is a whole one."""
    import shlex

    import mlflow

    run_id, resume = stop_at_line(run_args(), lambda line: line.startswith("1-data") and "started" in line)
    client = mlflow_client(tmp_path)
    assert client.get_run(run_id).info.status == "FAILED"
    assert shlex.split(resume)[:2] == ["lifecycle", "run"] and main(shlex.split(resume)[1:]) == 0
    experiment = client.get_experiment_by_name("sms-spam").experiment_id
    (parent,) = client.search_runs([experiment], "tags.mlflow.parentRunId IS NULL")
    assert parent.info.run_id == run_id and parent.info.status == "FINISHED"
    assert {r.info.status for r in stage_runs(client, parent)} <= {"FINISHED", "KILLED"}  # none left RUNNING
    stages = {r.info.run_name: r for r in stage_runs(client, parent) if r.info.status == "FINISHED"}
    assert sorted(stages) == [
        "1-data",
        "2-model",
        "3-environment",
        "4-fine-tune",
        "5-evaluate",
        "6-deploy",
        "7-monitor",
    ]
    evaluation = stages["5-evaluate"]
    assert evaluation.data.metrics["test_accuracy"] >= 0.8 and evaluation.data.metrics["test_loss"] > 0
    evaluated = {a.path for a in client.list_artifacts(evaluation.info.run_id)}
    assert {"model_card.md", "reliability_diagram.png", "confusion_matrix.png"} <= evaluated
    assert {"evaluation/slices.json", "evaluation/robustness.json", "evaluation/most_confident_mistakes.json"} <= {
        a.path for a in client.list_artifacts(evaluation.info.run_id, "evaluation")
    }
    found = evaluation.data.metrics
    assert found["test_accuracy_ci_low"] <= found["test_accuracy"] <= found["test_accuracy_ci_high"]
    assert {
        "baseline_test_accuracy",
        "test_ece",
        "temperature",
        "robustness.typos.drop",
        "slice.length.short.accuracy",
        "slice.source.data.accuracy",
    } <= set(found)
    assert len(stages["1-data"].inputs.dataset_inputs) == 3
    assert "train_loss" in stages["4-fine-tune"].data.metrics
    assert parent.data.params["model.strategy"] == "full" and parent.data.tags["data_fingerprint"]
    assert "deployment.json" in {a.path for a in client.list_artifacts(stages["6-deploy"].info.run_id)}
    assert stages["6-deploy"].data.metrics["prediction_agreement"] == 1.0
    # Stage 7: the held-out test split against the training reference is no drift.
    assert stages["7-monitor"].data.tags["drift_detected"] == "false"
    assert "drift/drift_report.html" in {
        a.path for a in client.list_artifacts(stages["7-monitor"].info.run_id, "drift")
    }

    challenger = client.get_model_version_by_alias("sms-spam-classifier", "challenger")
    assert challenger.version == 1 and challenger.tags["gate"] == "passed" and challenger.tags["format"] == "pytorch"
    assert challenger.description.startswith("# Model card: sms-spam-classifier")
    card = mlflow.artifacts.load_text(f"runs:/{evaluation.info.run_id}/model_card.md")
    for section in (
        "## Against a linear baseline",
        "## Calibration",
        "## Slices",
        "## Robustness",
        "## Most confident mistakes",
        "95% interval (bootstrap)",
    ):
        assert section in card, section
    champion = client.get_model_version_by_alias("sms-spam-classifier", "champion")
    assert champion.version == 2 and champion.tags["format"].startswith("onnx-")
    assert champion.tags["source_version"] == "1" and champion.description == challenger.description
    # Serving the PyTorch version is a user mistake: one message, exit code 2, no traceback.
    serve = ["serve" if a == "run" else a for a in run_args()] + ["--model", "models:/sms-spam-classifier/1"]
    assert main(serve) == 2
    assert "is not an ONNX bundle" in capsys.readouterr().err

    # A much worse model: registered, but its gate fails against the champion, so nothing moves.
    assert (
        main(run_args("train.epochs=1", "train.learning_rate=1e-7", "gate.min_accuracy=0", "gate.min_macro_f1=0")) == 0
    )
    worse = client.get_model_version("sms-spam-classifier", "3")
    assert worse.tags["gate"] == "failed" and "exact McNemar p = " in worse.tags["gate_reasons"]
    assert "worse (rule not_worse)" in worse.tags["gate_reasons"]
    assert client.get_model_version_by_alias("sms-spam-classifier", "challenger").version == 1
    assert client.get_model_version_by_alias("sms-spam-classifier", "champion").version == 2
    assert len(client.search_model_versions("name = 'sms-spam-classifier'")) == 3  # no deployment ran


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda rows: rows.rename(columns={"label": "category"}), "column 'label' is missing"),
        (lambda rows: rows.assign(label=["ham"] * len(rows)), "at least 2"),
        (lambda rows: rows.assign(label=rows["label"].replace("spam", "junk")), "not in ['ham', 'spam']"),
    ],
)
def test_bad_data_stops_at_stage_1_and_registers_nothing(change, expected, run_args, tmp_path, capsys):
    change(make_texts(240)).to_csv(tmp_path / "texts.csv", index=False)
    assert main(run_args("data.labels=[ham, spam]")) == 2  # a mistake in the data: the user's to fix
    printed = capsys.readouterr()
    assert expected in printed.err and "1-data failed: data validation failed for" in printed.err
    assert "Traceback" not in printed.out + printed.err
    assert "run failed: the champion is unchanged" in printed.err and "Full log: " in printed.err
    log_file = printed.err.strip().rsplit("Full log: ", 1)[1]
    assert "Traceback" in Path(log_file).read_text()  # the details stay in the log
    client = mlflow_client(tmp_path)
    experiment = client.get_experiment_by_name("sms-spam").experiment_id
    (parent,) = client.search_runs([experiment], "tags.mlflow.parentRunId IS NULL")
    assert parent.info.status == "FAILED"
    announced = next(line for line in printed.out.splitlines() if line.startswith("MLflow run    "))
    assert announced.split()[2] == parent.info.run_id
    assert f"MLflow run {parent.info.run_id} is marked FAILED" in printed.err
    assert "to resume it" not in printed.err  # the data must change: resuming would read the same data
    assert [r.info.run_name for r in stage_runs(client, parent)] == ["1-data"]
    assert client.search_registered_models() == []


@pytest.mark.slow
def test_drift_alerts_and_retrains_once_inside_the_cool_down_and_the_gate_decides_the_champion(run_args, tmp_path):
    from monitoring.retraining import ALERT_TAG, TRIGGER_TAG

    assert main(run_args()) == 0  # the champion to watch: version 2
    client = mlflow_client(tmp_path)
    experiment = client.get_experiment_by_name("sms-spam").experiment_id
    watch = ["watch" if a == "run" else a for a in run_args("monitor.cooldown_hours=1")] + ["--once"]

    # In-distribution traffic: no drift, no alert, nothing retrains.
    make_texts(240, seed=7).sample(60, random_state=0).to_csv(tmp_path / "normal.csv", index=False)
    assert main(watch + ["--set", f"monitor.current={tmp_path / 'normal.csv'}"]) == 0
    (calm,) = client.search_runs(
        [experiment], "tags.`lifecycle.stage` = '7-monitor' and tags.mlflow.parentRunId IS NULL"
    )
    assert calm.data.tags["drift_detected"] == "false" and "alert" not in calm.data.tags

    # Another kind of text, twice inside the cool-down: two alerts, one retraining, tagged with the first alert.
    words = ["invoice", "quarterly", "revenue", "forecast", "budget", "market", "analysis", "report", "board", "growth"]
    shifted = pd.DataFrame(
        {"text": [" ".join(words[(i + k) % 10] for k in range(20)) + f" {i}" for i in range(60)], "label": "ham"}
    )
    shifted.to_csv(tmp_path / "shifted.csv", index=False)
    feedback = tmp_path / "feedback"
    feedback.mkdir()
    shifted.to_json(feedback / "labelled.jsonl", orient="records", lines=True)
    shifted_watch = watch + [
        "--set",
        f"monitor.current={tmp_path / 'shifted.csv'}",
        "--set",
        f"data.feedback_path={feedback}",
    ]
    assert main(shifted_watch) == 0
    assert main(shifted_watch) == 0
    alerts = sorted((tmp_path / "work" / "alerts").glob("*.json"))
    assert len(alerts) == 2
    first, second = (json.loads(a.read_text()) for a in alerts)
    (retraining,) = client.search_runs([experiment], f"tags.`{TRIGGER_TAG}` = 'drift'")
    assert retraining.data.tags[ALERT_TAG] == first["id"] and retraining.info.status == "FINISHED"
    assert "retraining started" in first["retraining"] and "still running" not in second["retraining"]
    assert "cool-down" in second["retraining"]
    assert retraining.data.params["data.feedback_path"] == str(feedback)
    # The retraining ran every stage; the champion did not move: a version that passed the gate is the candidate
    # of a shadow rollout (deploy.rollout's default), which live traffic decides.
    assert {r.info.run_name for r in stage_runs(client, retraining)} >= {"1-data", "5-evaluate"}
    assert client.get_model_version_by_alias("sms-spam-classifier", "champion").version == 2
    if retraining.data.tags["gate"] == "passed":
        candidate = client.get_model_version_by_alias("sms-spam-classifier", "candidate")
        assert str(candidate.version) == retraining.data.tags["candidate_version"] != "2"
        assert candidate.tags["rollout.mode"] == "shadow" and candidate.tags["rollout.state"] == "running"


@pytest.mark.slow
def test_splits_that_share_texts_stop_stage_1_by_default(run_args, tmp_path, capsys):
    """With data.on_leakage=drop they train (tests/test_data.py drops them, tests/test_stages.py reads the card)."""
    rows = make_texts(240)
    parts = {
        "train": rows[:160],
        "val": pd.concat([rows[160:190], rows[:1]]),
        "test": pd.concat([rows[190:], rows[1:3], rows[160:161]]),
    }
    for name, part in parts.items():
        part.to_csv(tmp_path / f"{name}.csv", index=False)
    splits = ["data.path=null", *(f"data.{name}_path={tmp_path / f'{name}.csv'}" for name in parts)]
    assert main(run_args(*splits)) == 2
    assert "4 texts stand in two splits" in capsys.readouterr().err
