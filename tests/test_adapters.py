"""Each stage's MLflow adapter on its own, against a SQLite MLflow store, in the order a run calls them (no
kfp.local): an adapter bug shows here in seconds, with the run, the artifacts and the registry it leaves."""

from pathlib import Path

import pytest
from conftest import make_texts, tiny_settings

from components.config import load_config
from components.stages import DATA, DEPLOY, ENVIRONMENT, EVALUATE, FINE_TUNE, MODEL, MONITOR

pytestmark = pytest.mark.slow  # the stages in order, each test the next stage on the last one's outputs


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert):
    """The config, the tracking URI, a parent run and a folder per stage output; adapters fill them in order."""
    import mlflow

    from components.tracking import start_parent_run

    root = tmp_path_factory.mktemp("adapters")
    make_texts(240).to_csv(root / "texts.csv", index=False)
    cfg = load_config(
        "configs/sms_spam.yaml",
        tiny_settings(root / "work", root / "texts.csv", tiny_bert, "gate.compare_with_champion=false"),
    )
    uri = f"sqlite:///{root / 'mlflow.db'}"
    parent = start_parent_run(cfg, uri)
    return {
        "config": cfg.model_dump_json(),
        "uri": uri,
        "parent": parent,
        "root": root,
        "outputs": {},
        "client": mlflow.MlflowClient(),
    }


def stage_run(run, stage):
    client = run["client"]
    experiment = client.get_experiment_by_name("sms-spam").experiment_id
    (found,) = client.search_runs(
        [experiment], f"tags.mlflow.parentRunId = '{run['parent']}' and attributes.run_name = '{stage.run_name}'"
    )
    return found


def out(run, name) -> str:
    return run["outputs"].setdefault(name, str(run["root"] / name))


def test_data_logs_the_splits_as_inputs_and_the_reports(run):
    from components.data import adapter

    result = adapter.data(run["config"], run["uri"], run["parent"], out(run, "data"))
    assert result["labels"] == ["ham", "spam"] and sum(result["counts"]["train"].values()) == 168
    found = stage_run(run, DATA)
    assert found.info.status == "FINISHED" and found.data.metrics["test_rows"] == 48
    assert {i.dataset.name for i in found.inputs.dataset_inputs} == {
        f"SMS Spam Collection v.1 {split}" for split in ("train", "val", "test")
    }
    reports = {Path(a.path).name for a in run["client"].list_artifacts(found.info.run_id, "validation")}
    assert reports == {"validation.json", "validation_all.html"}
    assert run["client"].get_run(run["parent"]).data.tags["data_fingerprint"] == result["fingerprint"]


def test_model_logs_the_spec_and_what_trains(run):
    from components.model import adapter

    spec = adapter.model(run["config"], run["uri"], run["parent"], out(run, "data"), out(run, "init"))
    found = stage_run(run, MODEL)
    assert found.data.params["strategy"] == "full" and spec["labels"] == ["ham", "spam"]
    assert found.data.metrics["trainable_parameters"] == found.data.metrics["total_parameters"] > 0


def test_environment_logs_the_facts_and_hands_them_on(run):
    from components.environment import adapter
    from components.handoff import read_environment

    facts = adapter.environment(run["config"], run["uri"], run["parent"], out(run, "env"))
    found = stage_run(run, ENVIRONMENT)
    assert facts["device"] == "cpu" and found.data.params["hp.epochs"] == "2"
    assert read_environment(out(run, "env")).precision == facts["precision"] == "fp32"


def test_fine_tune_logs_the_curves_and_the_placement(run):
    from components.fine_tune import adapter

    result = adapter.fine_tune(
        run["config"], run["uri"], run["parent"], out(run, "data"), out(run, "init"), out(run, "env"), out(run, "model")
    )
    found = stage_run(run, FINE_TUNE)
    assert found.data.params["placement"] == "in_process" and result["epochs_run"] == 2
    history = run["client"].get_metric_history(found.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2] and found.data.metrics["best_val_accuracy"] >= 0.8
    assert (Path(out(run, "model")) / "model_spec.json").is_file()  # the spec travels with the model


def test_evaluate_registers_the_challenger_with_its_card(run):
    from components.evaluate import adapter
    from components.handoff import read_gate
    from components.registry import CHALLENGER, alias_version

    result = adapter.evaluate(
        run["config"],
        run["uri"],
        run["parent"],
        out(run, "data"),
        out(run, "env"),
        out(run, "model"),
        out(run, "report"),
    )
    client, name = run["client"], "sms-spam-classifier"
    assert result["gate_passed"] and alias_version(client, name, CHALLENGER) == result["model_version"]
    version = client.get_model_version(name, result["model_version"])
    assert version.tags["format"] == "pytorch" and version.description.startswith("# Model card: sms-spam-classifier")
    found = stage_run(run, EVALUATE)
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"model_card.md", "confusion_matrix.png", "training_curves.png", "metrics.json"} <= artifacts
    assert client.get_run(run["parent"]).data.metrics["test_accuracy"] == result["metrics"]["test_accuracy"]
    assert read_gate(out(run, "report")).model_version == result["model_version"]  # what stage 6 deploys
    run["challenger"] = result["model_version"]


def test_deploy_publishes_the_onnx_bundle_as_champion(run):
    from components.deploy import adapter
    from components.registry import CHAMPION, alias_version

    result = adapter.deploy(
        run["config"],
        run["uri"],
        run["parent"],
        out(run, "data"),
        out(run, "model"),
        run["challenger"],
        out(run, "deploy"),
        out(run, "report"),  # stage 5's logits of the test split, which parity reuses
    )
    client, name = run["client"], "sms-spam-classifier"
    assert alias_version(client, name, CHAMPION) == result["model_version"] != run["challenger"]
    version = client.get_model_version(name, result["model_version"])
    assert version.tags["source_version"] == run["challenger"] and version.tags["format"].startswith("onnx-")
    assert version.tags["gate"] == "passed"  # the challenger's tags and card carry over
    assert stage_run(run, DEPLOY).data.params["served"] in ("int8", "fp32")


def test_monitor_checks_the_test_split_against_the_champions_reference(run):
    from components.handoff import bundle_dir
    from components.monitor import adapter

    result = adapter.monitor(
        run["config"],
        run["uri"],
        run["parent"],
        out(run, "data"),
        str(bundle_dir(out(run, "deploy"))),
        out(run, "drift"),
    )
    assert result["drift_detected"] is False
    found = stage_run(run, MONITOR)
    assert found.data.tags["drift_detected"] == "false"
    assert {a.path for a in run["client"].list_artifacts(found.info.run_id, "drift")} >= {"drift/drift_summary.json"}


def damaged_shards(folder: Path, texts: list[str]) -> None:
    """A good shard of `texts`, and shards with 6 damaged records and 2 good ones, as a bucket's objects get
    damaged."""
    import datetime as dt
    import json

    now = dt.datetime.now(dt.timezone.utc)
    line = lambda text, stamp=now.isoformat(): json.dumps({"timestamp": stamp, "text": text, "label": "ham"})  # noqa
    day = f"predictions-{now:%Y%m%d}-{now:%H%M%S}"
    shards = {
        "good": "\n".join(line(t) for t in texts) + "\n",
        "truncated": line(texts[0]) + "\n" + line(texts[1])[:25],  # cut mid-line as a killed writer leaves it
        "latin1": line(texts[2]).encode().replace(b'"ham"', b'"h\xe4m"') + b"\n",
        "stamp": line(texts[3], "yesterday-ish") + "\n" + line(texts[4]) + "\n",
        "no-text": json.dumps({"timestamp": now.isoformat(), "label": "ham"}) + "\n" + line(7) + "\n[1, 2]\n",
    }
    for name, content in shards.items():
        (folder / f"{day}-{name}-000001.jsonl").write_bytes(content if isinstance(content, bytes) else content.encode())


def test_monitor_skips_damaged_shards_counts_them_and_still_gives_a_verdict(run, capsys):
    """The prediction log as a bucket may hold it: one good shard beside shards cut, mis-encoded or malformed."""
    from conftest import as_args

    from pipelines.cli import main

    folder = run["root"] / "predictions"
    folder.mkdir()
    damaged_shards(folder, make_texts(240, seed=7)["text"].sample(60, random_state=0).tolist())
    settings = tiny_settings(
        run["root"] / "work",
        run["root"] / "texts.csv",
        "unused",
        f"tracking.uri={run['uri']}",
        f"storage.predictions={folder}",
    )
    assert main(["monitor", *as_args(settings)]) == 0
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err
    assert "latin1-000001.jsonl: line 1: not valid utf-8 text (byte 0xe4)" in printed.out + printed.err
    assert "stamp-000001.jsonl: line 1: the timestamp 'yesterday-ish' is not an ISO 8601 time" in printed.out
    assert "62 texts of prediction log" in printed.out and "6 damaged records skipped" in printed.out
    assert "drift not detected" in printed.out
    client = run["client"]
    experiment = client.get_experiment_by_name("sms-spam").experiment_id
    check = client.search_runs(
        [experiment],
        "tags.`lifecycle.stage` = '7-monitor' and tags.mlflow.parentRunId IS NULL",
        order_by=["attributes.start_time DESC"],
    )[0]
    assert check.data.metrics["skipped_records"] == 6 and check.data.metrics["current_size"] == 62

    # Nothing but damaged shards: a clear message, exit code 2, no traceback.
    for shard in folder.iterdir():
        if any(kind in shard.name for kind in ("good", "truncated", "stamp")):
            shard.unlink()
    assert main(["monitor", *as_args(settings)]) == 2
    printed = capsys.readouterr()
    assert "nothing usable: 4 damaged records, e.g. " in printed.err and "Traceback" not in printed.err


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.tsv", "empty.csv", "empty.parquet"])
def test_an_empty_window_is_no_verdict_whatever_its_format(run, name, capsys):
    import pandas as pd
    from conftest import as_args

    from pipelines.cli import main

    current = run["root"] / name
    if name.endswith(".parquet"):
        pd.DataFrame({"text": pd.Series([], dtype=str)}).to_parquet(current)
    else:
        current.write_text("")
    settings = tiny_settings(run["root"] / "work", run["root"] / "texts.csv", "unused", f"tracking.uri={run['uri']}")
    assert main(["monitor", "--current", str(current), *as_args(settings)]) == 0
    printed = capsys.readouterr().out
    assert f"0 texts of {current}" in printed and "no verdict" in printed
