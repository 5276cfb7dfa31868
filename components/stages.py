"""Adapters between the KFP components and the stage cores: parse the config, open the stage's nested MLflow
run, call the core, log what people will look at later. Each returns a small dict for the KFP metadata."""

from __future__ import annotations

import json
from pathlib import Path

from components.config import LifecycleConfig
from components.handoff import (DEPLOYMENT, ENVIRONMENT, MANIFEST, MODEL_SPEC, TRAIN_RESULT, read_environment,
                                read_manifest, read_model_spec, read_train_result, write_json)


def _config(config_json: str) -> LifecycleConfig:
    return LifecycleConfig.model_validate_json(config_json)


def data_stage(config_json: str, tracking_uri: str, parent_run_id: str, out_dir: str) -> dict:
    import mlflow
    import pandas as pd

    from components.data_prep import prepare_data
    from components.tracking import stage_run

    cfg = _config(config_json)
    with stage_run(tracking_uri, cfg.tracking.experiment, parent_run_id, "1-data") as stage:
        mlflow.log_params({"source": cfg.data.path or cfg.data.url or cfg.data.train_path, "balance": cfg.data.balance,
                           "split": f"{cfg.data.split.train}/{cfg.data.split.val}/{cfg.data.split.test}"})
        try:
            prepared = prepare_data(cfg.data, cfg.seed, Path(cfg.work_dir) / "downloads", out_dir)
        finally:  # the validation report is most useful when the gate failed
            for report in Path(out_dir).glob("validation*"):
                mlflow.log_artifact(str(report), "validation")
        for split, counts in prepared.counts.items():
            rows = pd.read_parquet(Path(out_dir) / f"{split}.parquet")
            dataset = mlflow.data.from_pandas(rows, source=prepared.source, name=f"{cfg.data.name} {split}",
                                              targets="label")
            mlflow.log_input(dataset, context=split)
            mlflow.log_metric(f"{split}_rows", sum(counts.values()))
        mlflow.log_params({"data_fingerprint": prepared.fingerprint, "labels": ",".join(prepared.labels)})
        mlflow.log_metrics({f"{split}_dropped_leaking_texts": n for split, n in prepared.dropped_leaking_texts.items()})
        mlflow.log_dict(prepared.to_dict(), MANIFEST)
        stage.result = prepared.summary()
    mlflow.MlflowClient().set_tag(parent_run_id, "data_fingerprint", prepared.fingerprint)
    return {"fingerprint": prepared.fingerprint, "labels": prepared.labels, "counts": prepared.counts}


def model_stage(config_json: str, tracking_uri: str, parent_run_id: str, data_dir: str, out_dir: str) -> dict:
    import mlflow

    from components.model_init import initialise_model
    from components.tracking import stage_run

    cfg = _config(config_json)
    labels = read_manifest(data_dir)["labels"]
    with stage_run(tracking_uri, cfg.tracking.experiment, parent_run_id, "2-model") as stage:
        spec = initialise_model(cfg.model.base, cfg.model.strategy, cfg.model.trainable_blocks, cfg.model.lora,
                                labels, cfg.seed, out_dir)
        mlflow.log_params({k: v for k, v in spec.to_dict().items() if k not in ("labels", "source")})
        mlflow.log_metrics({"total_parameters": spec.total_parameters,
                            "trainable_parameters": spec.trainable_parameters})
        stage.result = (f"{spec.base} ({spec.architecture}), {spec.strategy}: {spec.trainable_parameters:,} of "
                        f"{spec.total_parameters:,} parameters train")
    return spec.to_dict()


def environment_stage(config_json: str, tracking_uri: str, parent_run_id: str, out_dir: str) -> dict:
    import mlflow

    from components.environment import describe_environment, pip_freeze
    from components.tracking import flatten, stage_run

    cfg = _config(config_json)
    hyperparameters = cfg.train.model_dump() | {"max_length": cfg.model.max_length, "strategy": cfg.model.strategy,
                                                "dropout": cfg.model.dropout}
    with stage_run(tracking_uri, cfg.tracking.experiment, parent_run_id, "3-environment") as stage:
        env = describe_environment(cfg.train.device, cfg.train.precision, cfg.train.threads, cfg.seed,
                                   hyperparameters)
        facts = env.to_dict()
        mlflow.log_params(flatten({k: v for k, v in facts.items() if k != "hyperparameters"}))
        mlflow.log_params(flatten(hyperparameters, "hp."))
        mlflow.log_text(pip_freeze(), "pip_freeze.txt")
        mlflow.log_dict(facts, ENVIRONMENT)
        stage.result = f"{env.device}, {env.precision}, {env.threads} threads"
    write_json(out_dir, ENVIRONMENT, facts)
    return {"device": env.device, "precision": env.precision, "threads": env.threads}


def training_stage(config_json: str, tracking_uri: str, parent_run_id: str, data_dir: str, init_dir: str,
                   env_dir: str, out_dir: str) -> dict:
    import mlflow
    import torch

    from components.distributed import fine_tune_in_processes
    from components.environment import seed_everything
    from components.storage import join
    from components.tracking import stage_run
    from components.trainjob import fine_tune_on_train_job
    from components.training import fine_tune

    cfg = _config(config_json)
    env = read_environment(env_dir)
    torch.set_num_threads(env["threads"])
    seed_everything(cfg.seed)
    processes = cfg.train.processes or (cfg.kfp.gpu.count if env["device"] == "cuda" else 1) or 1
    arguments = dict(init_dir=init_dir, data_dir=data_dir, out_dir=out_dir,
                     checkpoint_uri=join(cfg.checkpoints_uri(), parent_run_id), model_cfg=cfg.model,
                     train_cfg=cfg.train, device=env["device"], precision=env["precision"], seed=cfg.seed)
    with stage_run(tracking_uri, cfg.tracking.experiment, parent_run_id, "4-fine-tune") as stage:
        mlflow.log_params({"processes": processes, "nodes": cfg.train.nodes})
        mlflow_run = (tracking_uri, mlflow.active_run().info.run_id)
        if cfg.train.nodes > 1:
            result = fine_tune_on_train_job(cfg, parent_run_id, processes, **arguments, mlflow_run=mlflow_run)
        elif processes > 1:
            result = fine_tune_in_processes(processes, **arguments, threads=env["threads"], mlflow_run=mlflow_run)
        else:
            result = fine_tune(**arguments, log_metrics=lambda metrics, step: mlflow.log_metrics(metrics, step=step))
        mlflow.log_metrics({"train_seconds": result.train_seconds, "samples_per_second": result.samples_per_second,
                            "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
                            "best_val_accuracy": result.best_val_accuracy})
        mlflow.log_dict(result.to_dict(), TRAIN_RESULT)
        stage.result = (f"best epoch {result.best_epoch} of {result.epochs_run}: val loss {result.best_val_loss:.4f}, "
                        f"val accuracy {result.best_val_accuracy:.2%}; {result.samples_per_second:.0f} texts/s")
    write_json(out_dir, MODEL_SPEC, read_model_spec(init_dir))
    return {k: v for k, v in result.to_dict().items() if k != "history"}


def evaluation_stage(config_json: str, tracking_uri: str, parent_run_id: str, data_dir: str, env_dir: str,
                     model_dir: str, out_dir: str) -> dict:
    import mlflow
    import pandas as pd

    from components.evaluation import decide_gate, evaluate
    from components.evaluation_plots import plot_confusion, plot_curves, plot_reliability
    from components.handoff import TEMPERATURE_TAG
    from components.model_card import render_model_card
    from components.pyfunc_model import TextClassifier
    from components.registry import CHALLENGER, champion_predictor, register_model, set_alias
    from components.tracking import stage_run

    cfg = _config(config_json)
    env, manifest = read_environment(env_dir), read_manifest(data_dir)
    training, spec = read_train_result(model_dir), read_model_spec(model_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with stage_run(tracking_uri, cfg.tracking.experiment, parent_run_id, "5-evaluate") as stage:
        labels = manifest["labels"]
        champion = champion_predictor(cfg.tracking.registered_model, labels) if cfg.gate.compare_with_champion else None
        found = evaluate(model_dir, data_dir, cfg.model.max_length, cfg.train.eval_batch_size, env["device"],
                         env["precision"], cfg.seed, cfg.gate.min_slice_size, champion)
        metrics = found.metrics
        gate = decide_gate(metrics, cfg.gate, found.champion, found.baseline, found.worst_slice)
        plot_confusion(metrics, labels, out / "confusion_matrix.png")
        plot_curves(training["history"], out / "training_curves.png")
        plot_reliability(found.reliability_before, found.reliability, found.calibration.temperature,
                         out / "reliability_diagram.png")
        card = render_model_card(cfg.tracking.registered_model, spec, manifest,
                                 {"name": cfg.data.name, "licence": cfg.data.licence, "citation": cfg.data.citation,
                                  "balance": cfg.data.balance, "group_column": cfg.data.group_column},
                                 env, training, found, gate)
        (out / "model_card.md").write_text(card)
        (out / "metrics.json").write_text(json.dumps(found.to_dict() | {"gate": gate.__dict__}, indent=2))
        mlflow.log_metrics(found.scalars())
        for name in ("confusion_matrix.png", "training_curves.png", "reliability_diagram.png", "model_card.md",
                     "metrics.json"):
            mlflow.log_artifact(str(out / name))
        for name, table in found.tables().items():
            mlflow.log_table(table, f"evaluation/{name}.json")
        tags = {"gate": "passed" if gate.passed else "failed", "gate_reasons": "; ".join(gate.reasons),
                "data_fingerprint": manifest["fingerprint"], "strategy": spec["strategy"], "base_model": spec["base"],
                "test_accuracy": f"{metrics.test_accuracy:.4f}", "test_loss": f"{metrics.test_loss:.4f}",
                "champion_version": champion[0] if champion else "none",
                TEMPERATURE_TAG: f"{found.calibration.temperature:.6g}"}
        test_texts = pd.read_parquet(Path(data_dir) / "test.parquet")["text"].head(3).tolist()
        version = register_model(TextClassifier(), {"model_dir": model_dir}, labels, cfg.tracking.registered_model,
                                 card, tags | {"format": "pytorch"}, test_texts)
        if gate.passed:
            set_alias(cfg.tracking.registered_model, CHALLENGER, version)
        mlflow.set_tags({"gate": tags["gate"], "model_version": version})
        stage.result = (f"test accuracy {metrics.test_accuracy:.2%} (95% CI {found.intervals['accuracy'][0]:.2%}-"
                        f"{found.intervals['accuracy'][1]:.2%}; baseline {found.baseline.test_accuracy:.2%}), macro-F1 "
                        f"{metrics.test_macro_f1:.4f}, cross-entropy {metrics.test_loss:.4f}; gate {tags['gate']} "
                        f"({tags['gate_reasons']}); version {version}" + (" is the challenger" if gate.passed else ""))
    # What users compare across runs, on the parent run too.
    client = mlflow.MlflowClient()
    for key, value in metrics.scalars().items():
        client.log_metric(parent_run_id, key, value)
    client.set_tag(parent_run_id, "gate", tags["gate"])
    client.set_tag(parent_run_id, "gate_reasons", tags["gate_reasons"])
    client.set_tag(parent_run_id, "model_version", version)
    return {"gate_passed": gate.passed, "gate_reasons": gate.reasons, "model_version": version,
            "metrics": metrics.scalars(), "confusion": metrics.confusion, "labels": labels}


def open_parent_run_stage(config_json: str, tracking_uri: str, parent_run_id: str) -> str:
    from components.tracking import start_parent_run

    if parent_run_id:
        return parent_run_id
    cfg = _config(config_json)
    return start_parent_run(cfg, tracking_uri)


def deployment_stage(config_json: str, tracking_uri: str, parent_run_id: str, data_dir: str, model_dir: str,
                     challenger_version: str, out_dir: str) -> dict:
    """Stage 6 (runs only when the stage 5 gate passed): ONNX bundle, registered and promoted to champion."""
    import mlflow
    import pandas as pd

    from components.deployment import deploy_bundle
    from components.handoff import TEMPERATURE_TAG, bundle_dir, read_labels
    from components.pyfunc_model import OnnxTextClassifier
    from components.registry import promote, register_model
    from components.tracking import stage_run

    cfg = _config(config_json)
    name = cfg.tracking.registered_model
    with stage_run(tracking_uri, cfg.tracking.experiment, parent_run_id, "6-deploy") as stage:
        source = mlflow.MlflowClient().get_model_version(name, challenger_version)
        temperature = float(source.tags.get(TEMPERATURE_TAG, 1.0))  # stage 5's calibration, served as it decided
        try:
            report = deploy_bundle(model_dir, data_dir, out_dir, cfg.monitor.reference_size, cfg.seed,
                                   temperature=temperature)
        finally:  # the parity report matters most when parity failed
            if (Path(out_dir) / DEPLOYMENT).is_file():
                mlflow.log_artifact(str(Path(out_dir) / DEPLOYMENT))
        mlflow.log_metrics({k: v for k, v in report.to_dict().items() if isinstance(v, float)})
        mlflow.log_params({"served": report.served, "served_reason": report.reason, "temperature": temperature})
        test_texts = pd.read_parquet(Path(data_dir) / "test.parquet")["text"].head(3).tolist()
        version = register_model(
            OnnxTextClassifier(), {"bundle": str(bundle_dir(out_dir))}, read_labels(model_dir), name,
            source.description,
            source.tags | {"format": f"onnx-{report.served}", "source_version": challenger_version,
                           "parity_max_abs_logit_diff": f"{report.max_abs_logit_diff:.2e}"}, test_texts)
        demoted = promote(name, version)
        mlflow.set_tags({"model_version": version, "previous_champion": demoted or "none"})
        stage.result = (f"ONNX parity max |logit diff| {report.max_abs_logit_diff:.1e}; serves {report.served} "
                        f"({report.reason}); version {version} is the champion"
                        + (f" (was {demoted})" if demoted else ""))
    mlflow.MlflowClient().set_tag(parent_run_id, "champion_version", version)
    return report.to_dict() | {"model_version": version, "previous_champion": demoted}
