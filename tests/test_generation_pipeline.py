"""task=generation through `lifecycle run` (kfp.local): the seven stages on a tiny chat Llama, the model registered
with its card when it beats its base, exported, made champion and checked for drift; a later model no better than the
champion is refused."""

import pytest
import yaml
from conftest import as_args
from test_generation_data import instructions, write

from pipelines.cli import main

pytest_plugins = ["test_generation_data"]  # its chat_llama fixture


@pytest.fixture
def generation_args(tmp_path, chat_llama, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = write(instructions(120), tmp_path / "examples.jsonl")
    cases = tmp_path / "cases.yaml"
    cases.write_text(yaml.safe_dump([{"category": "polite", "prompt": "Say hello.", "forbidden_words": ["zebra"]}]))

    def args(*overrides):
        settings = [
            f"work_dir={tmp_path / 'work'}",
            f"data.path={data}",
            "generation.format=auto",
            f"test_cases.path={cases}",
            "generation.eval_examples=4",
            "generation.max_new_tokens=4",
            "generation.top_losses=3",
            "monitor.reference_size=50",
            f"model.base={chat_llama}",
            "model.strategy=full",
            "model.max_length=120",
            "train.epochs=3",
            "train.learning_rate=3e-3",
            *overrides,
        ]
        return ["run", "--config", "configs/instructions.yaml", *as_args(settings)]

    return args


@pytest.mark.slow
def test_lifecycle_run_trains_a_generator_and_registers_it_with_its_card(generation_args, tmp_path, capsys):
    import mlflow

    assert main(generation_args()) == 0
    printed = capsys.readouterr().out
    assert "test perplexity" in printed and "6-deploy" in printed and "7-monitor" in printed
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("instructions").experiment_id
    (parent,) = client.search_runs([experiment], "tags.mlflow.parentRunId IS NULL")
    stages = {
        r.info.run_name: r
        for r in client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    }
    assert sorted(stages) == [
        "1-data",
        "2-model",
        "3-environment",
        "4-fine-tune",
        "5-evaluate",
        "6-deploy",
        "7-monitor",
    ]
    metrics = stages["5-evaluate"].data.metrics
    names = ("test_perplexity", "base_test_perplexity", "test_rouge_l", "base_test_rouge_l", "test_case_pass_rate")
    assert set(names) <= set(metrics)
    assert metrics["test_perplexity"] < metrics["base_test_perplexity"] and metrics["test_case_pass_rate"] == 1.0
    tables = {a.path for a in client.list_artifacts(stages["5-evaluate"].info.run_id, "evaluation")}
    assert {"evaluation/generations.json", "evaluation/highest_loss.json", "evaluation/test_cases.json"} <= tables
    version = client.get_model_version_by_alias("instruction-follower", "challenger")
    assert version.tags["gate"] == "passed" and version.tags["task"] == "generation"
    assert version.description.startswith("# Model card: instruction-follower")
    champion = client.get_model_version_by_alias("instruction-follower", "champion")
    assert champion.tags["format"].startswith("onnx-") and champion.tags["source_version"] == str(version.version)
    assert "## Deployment" in champion.description
    import pandas as pd

    generator = mlflow.pyfunc.load_model("models:/instruction-follower@champion")
    answered = generator.predict(
        pd.DataFrame({"prompt": ["Repeat the word red 1 times."]}), params={"max_new_tokens": 2}
    )
    assert list(answered.columns) == ["generation"] and len(answered) == 1
    assert stages["7-monitor"].data.tags["drift_detected"] == "false"

    # A barely trained model is judged against the champion and refused; the champion stays.
    assert main(generation_args("train.epochs=1", "train.learning_rate=1e-6")) == 0
    (second,) = client.search_runs([experiment], "tags.mlflow.parentRunId IS NULL AND tags.gate = 'failed'")
    refused = client.get_model_version("instruction-follower", second.data.tags["model_version"])
    assert "vs champion version" in refused.tags["gate_reasons"] and "Wilcoxon" in refused.tags["gate_reasons"]
    assert client.get_model_version_by_alias("instruction-follower", "challenger").version == version.version
    assert client.get_model_version_by_alias("instruction-follower", "champion").version == champion.version
