"""`lifecycle tune`: an Optuna study whose trials are nested MLflow runs, pruned on validation loss, resumable, and
whose winner goes through the gate like a run's model; compiled, its workers are a ParallelFor."""

import contextlib
import json
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import as_args, compile_pipelines, make_texts, stop_at_line, tiny_settings, write_splits

from pipelines.cli import main


def test_the_compiled_sweep_runs_its_workers_in_a_parallel_for_each_with_a_gpu(tmp_path):
    from kfp import components

    out = tmp_path / "pipeline.yaml"
    settings = [
        "data.path=s3://b/x.tsv",
        "tune.parallel=3",
        "tune.storage=postgresql://lifecycle@optuna-db:5432/optuna",
    ]
    assert compile_pipelines(settings, "-o", str(out)) == 0
    sweep_yaml = tmp_path / "sweep_pipeline.yaml"
    assert components.load_component_from_file(str(sweep_yaml)).name == "sms-spam-sweep"
    spec = yaml.safe_load(sweep_yaml.read_text())
    loops = [task for task in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in task]
    assert len(loops) == 1 and loops[0]["iteratorPolicy"]["parallelismLimit"] == 3
    assert json.loads(loops[0]["parameterIterator"]["items"]["raw"]) == [0, 1, 2]
    executors = spec["deploymentSpec"]["executors"]
    assert executors["exec-sweep"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    assert "resources" not in executors["exec-sweep-select"]["container"]
    assert {"exec-evaluate", "exec-deploy", "exec-monitor"} <= set(executors)
    text = sweep_yaml.read_text()
    assert str(Path.cwd()) not in text and str(tmp_path) not in text  # each pod has its own disk


@pytest.fixture
def tune_args(tmp_path, tiny_bert, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    make_texts(240).to_csv(tmp_path / "texts.csv", index=False)
    # Learning rates around the tiny model's (3e-3): trials that differ, some pruned.
    space = "tune.space={train.learning_rate: {low: 3.0e-4, high: 1.0e-2, log: true}}"
    return [
        "tune",
        *as_args(
            tiny_settings(
                tmp_path / "work",
                tmp_path / "texts.csv",
                tiny_bert,
                "tune.trials=4",
                "tune.prune_after_trials=1",
                "deploy.rollout.mode=direct",
                space,
            )
        ),
    ]


@pytest.mark.slow
def test_a_sweep_stopped_and_resumed_nests_its_trials_prunes_and_registers_the_best_through_the_gate(
    tune_args, tmp_path, capsys
):
    """Stopped (SIGTERM) once two trials have finished, resumed with the command it printed."""
    import mlflow
    import optuna

    run_id, resume = stop_at_line(tune_args, lambda line: line.startswith("trial   1:"))
    assert shlex.split(resume)[:2] == ["lifecycle", "tune"] and main(shlex.split(resume)[1:]) == 0
    printed = capsys.readouterr().out
    assert "trial   0:" not in printed and "trial   1:" not in printed  # finished before the stop: not run again
    assert "trial   3:" in printed and "won (by validation loss)" in printed

    study = optuna.load_study(study_name=run_id, storage=f"sqlite:///{tmp_path / 'work' / 'optuna.db'}")
    states = [t.state.name for t in study.trials if not t.user_attrs.get("interrupted")]
    assert len(states) == 4 and set(states) <= {"COMPLETE", "PRUNED"}  # the budget counts across the stop
    assert "PRUNED" in states
    first_two = {t.number: t.params for t in study.trials[:2]}
    retried = [t for t in study.trials if t.user_attrs.get("retry_of") is not None]
    assert all(t.user_attrs["retry_of"] not in first_two for t in retried)  # finished trials are not run again

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("sms-spam")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs
    parent = client.get_run(run_id)
    assert parent.info.status == "FINISHED"
    trials = {
        r.info.run_name: r
        for r in client.search_runs(
            [experiment.experiment_id], f"tags.mlflow.parentRunId = '{run_id}' and tags.`lifecycle.stage` = 'trial'"
        )
        if r.info.status == "FINISHED"
    }
    assert len(trials) == 4
    for run in trials.values():
        assert {"train.learning_rate", "train.epochs", "train.batch_size"} <= set(run.data.params)
        assert run.data.tags["trial.state"] in ("complete", "pruned") and "trial_seconds" in run.data.metrics
        epochs = client.get_metric_history(run.info.run_id, "val_loss")
        pruned_at = int(run.data.tags.get("trial.pruned_at_epoch", run.data.params["train.epochs"]))
        assert len(epochs) <= pruned_at and len(epochs) >= 1
    complete = {name: run for name, run in trials.items() if run.data.tags["trial.state"] == "complete"}
    winner = min(complete, key=lambda name: complete[name].data.metrics["best_val_loss"])
    assert parent.data.tags["sweep.winner"] == winner
    assert parent.data.params["train.learning_rate"] == complete[winner].data.params["train.learning_rate"]
    assert parent.data.metrics["best_val_loss"] == complete[winner].data.metrics["best_val_loss"]
    assert {"sweep/optimization_history.png", "sweep/param_importances.png", "sweep/best_config.yaml"} <= {
        a.path for a in client.list_artifacts(run_id, "sweep")
    }

    # The winner went through stage 5's gate and stage 6 like a run's model.
    version = client.get_model_version("sms-spam-classifier", parent.data.tags["model_version"])
    assert version.tags["gate"] == "passed" and version.tags["sweep"].startswith(f"trial {winner.split('-')[1]} of 4")
    champion = client.get_model_version_by_alias("sms-spam-classifier", "champion")
    assert str(champion.version) == parent.data.tags["champion_version"]
    (evaluation,) = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{run_id}' and attributes.run_name = '5-evaluate'"
    )
    card = Path(
        mlflow.artifacts.download_artifacts(
            run_id=evaluation.info.run_id, artifact_path="model_card.md", dst_path=str(tmp_path)
        )
    ).read_text()
    assert "## Hyper-parameter search" in card and f"Trial {winner.split('-')[1]} won" in card
    assert "4 configurations tried" in card
    assert not (tmp_path / "work" / "checkpoints" / run_id).exists()  # the trials' models and checkpoints


def test_trials_a_killed_worker_left_are_tried_again_from_their_checkpoint_and_not_counted(tmp_path, tiny_bert):
    from conftest import job_for

    from components.config import validate_config
    from components.handoff import read_sweep
    from components.model.core import model
    from components.sweep import core

    cfg = validate_config(
        {
            "data": {"path": "x.csv"},
            "model": {"base": str(tiny_bert), "max_length": 32},
            "train": {"epochs": 2, "batch_size": 16, "learning_rate": 3e-3},
            "tune": {"trials": 3, "space": {"train.epochs": None, "train.batch_size": None}},
        }
    )
    data_dir = write_splits(tmp_path / "data", ["ham", "spam"])
    model(cfg.model, ["ham", "spam"], 0, tmp_path / "init")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = core.open_study(cfg, url, "sweep")
    assert core.prepare_study(cfg, study) == ["trial 0 is the config's own values"]
    killed = study.ask()  # a worker takes trial 0 (the defaults), then dies
    killed_params = core.suggest(killed, cfg)
    killed.set_user_attr(core.CHECKPOINT, str(tmp_path / "checkpoint-of-trial-0"))

    assert core.prepare_study(cfg, study) == ["trial 0 was interrupted: tried again from its checkpoint"]
    job = job_for(tmp_path / "init", data_dir, "", "", cfg.model, cfg.train)

    @contextlib.contextmanager
    def unlogged(number, params):
        yield core.TrialLog(lambda metrics, step: None)

    assert core.run_trials(cfg, study, job, str(tmp_path / "sweep"), 0, unlogged) == 3
    retry = study.trials[1]
    assert retry.params == killed_params and retry.user_attrs[core.RETRY_OF] == 0
    assert retry.user_attrs[core.CHECKPOINT] == str(tmp_path / "checkpoint-of-trial-0")
    assert len(core.finished_trials(study)) == 3 and study.trials[0].user_attrs[core.INTERRUPTED]
    assert core.prepare_study(cfg, study) == []  # tried again once
    assert core.run_trials(cfg, study, job, str(tmp_path / "sweep"), 0, unlogged) == 0  # the budget is spent

    sweep, winner_cfg = core.select(cfg, study, url, str(tmp_path / "winner"))
    best = min((t for t in study.trials if t.value is not None), key=lambda t: t.value)
    assert sweep.winner == best.number and winner_cfg.train.learning_rate == best.params["train.learning_rate"]
    assert read_sweep(tmp_path / "winner")["defaults_trial"] == 1  # the retried defaults
    assert (tmp_path / "winner" / "model.safetensors").is_file()


def test_the_search_space_is_the_config_and_its_mistakes_are_named():
    from components.config import ConfigError, validate_config
    from components.sweep.core import study_storage
    from components.sweep.space import search_space

    lora = validate_config(
        {
            "data": {"path": "x"},
            "model": {"strategy": "lora"},
            "tune": {"space": {"train.epochs": None, "model.max_length": {"choices": [64, 128]}}},
        }
    )
    space = search_space(lora)
    assert list(space)[0] == "train.learning_rate" and space["train.learning_rate"].log
    assert space["train.learning_rate"].low < 2e-3 < space["train.learning_rate"].high  # around lora's default
    assert "train.epochs" not in space and {"model.lora.r", "model.lora.target_modules", "model.max_length"} <= set(
        space
    )
    for bad, message in (
        ({"train.nope": {"low": 1, "high": 2}}, "'train.nope' is not a key of the config"),
        ({"train.epochs": {"low": 3, "high": 2}}, "give low < high"),
        ({"data.path": {"choices": ["a"]}}, "a trial can change the keys under model. and train."),
    ):
        with pytest.raises(ConfigError, match=message):
            validate_config({"data": {"path": "x"}, "tune": {"space": bad}})
    with pytest.raises(ConfigError, match="tune.storage: .* postgresql://"):
        study_storage(lora, "http://mlflow:5000")
    assert (
        study_storage(
            lora.model_copy(update={"tune": lora.tune.model_copy(update={"storage": "postgresql://u:p@db/optuna"})}),
            "http://mlflow:5000",
        )
        == "postgresql+psycopg://u:p@db/optuna"
    )


@pytest.mark.slow
def test_on_the_cluster_path_two_workers_share_the_study_in_postgresql_and_log_to_the_tracking_server(
    tracking_server, tiny_bert, tmp_path, monkeypatch, capsys
):
    """As on a cluster: an MLflow server on PostgreSQL, the study in a PostgreSQL database of its own, two workers
    at once (kfp.local runs a ParallelFor's iterations in parallel, each in its own process)."""
    import mlflow
    import optuna
    import psycopg

    database = f"optuna_{tmp_path.name.lower()[-20:]}".replace("-", "_")
    with psycopg.connect(tracking_server.backend_uri, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {database}")
    study_url = tracking_server.backend_uri.rsplit("/", 1)[0] + f"/{database}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.uri)
    make_texts(240).to_csv(tmp_path / "texts.csv", index=False)
    assert (
        main(
            [
                "tune",
                *as_args(
                    tiny_settings(
                        tmp_path / "work",
                        tmp_path / "texts.csv",
                        tiny_bert,
                        "tune.trials=3",
                        "tune.parallel=2",
                        f"tune.storage={study_url}",
                        f"tracking.experiment=sweep-{database}",
                        f"tracking.registered_model={database}",
                        "deploy.rollout.mode=direct",
                    )
                ),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "4-sweep-0      done" in printed and "4-sweep-1      done" in printed

    client = mlflow.MlflowClient(tracking_server.uri)
    experiment = client.get_experiment_by_name(f"sweep-{database}")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.mlflow.parentRunId IS NULL")
    study = optuna.load_study(
        study_name=parent.info.run_id, storage="postgresql+psycopg://" + study_url.removeprefix("postgresql://")
    )
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == len(study.trials) and 3 <= len(finished) <= 4  # a trial under way when the budget is met
    trials = client.search_runs(
        [experiment.experiment_id],
        f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.`lifecycle.stage` = 'trial'",
    )
    assert len(trials) == len(finished) and {r.info.status for r in trials} == {"FINISHED"}
    assert parent.data.tags["sweep.winner"].startswith("trial-")
    assert "sweep/optimization_history.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert client.get_model_version_by_alias(database, "champion")
