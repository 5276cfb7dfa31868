"""Stage 1's MLflow adapter: the nested run `1-data` with the splits as MLflow data set inputs and the reports."""

from __future__ import annotations

from components.config import LifecycleConfig
from components.stages import DATA


def data(config_json: str, tracking_uri: str, parent_run_id: str, out_dir: str) -> dict:
    import mlflow

    from components.handoff import MANIFEST, read_split, stage_reports
    from components.pii import checked_entities
    from components.tasks import task_of
    from components.tracking import stage_run

    cfg = LifecycleConfig.model_validate_json(config_json)
    with stage_run(tracking_uri, cfg.tracking.experiment, parent_run_id, DATA.run_name) as stage:
        mlflow.log_params(
            {
                "source": cfg.data.path or cfg.data.url or cfg.data.train_path,
                "balance": cfg.data.balance,
                "pii": cfg.data.pii,
                "pii_entities": ",".join(checked_entities(cfg.pii)),
                "split": f"{cfg.data.split.train}/{cfg.data.split.val}/{cfg.data.split.test}",
                "task": cfg.task,
            }
        )
        try:
            manifest = task_of(cfg.task).prepare_data(cfg, out_dir)
        finally:  # the validation report is most useful when the gate failed
            for report in stage_reports(out_dir):
                if report.is_file():
                    mlflow.log_artifact(str(report), "validation")
        for split, counts in manifest.counts.items():
            dataset = mlflow.data.from_pandas(
                read_split(out_dir, split),
                source=manifest.source,
                name=f"{cfg.data.name} {split}",
                targets=task_of(cfg.task).target,
            )
            mlflow.log_input(dataset, context=split)
            mlflow.log_metric(f"{split}_rows", sum(counts.values()))
        mlflow.log_params({"data_fingerprint": manifest.fingerprint, "labels": ",".join(manifest.labels)})
        mlflow.log_metrics(
            {f"{split}_dropped_leaking_texts": n for split, n in manifest.dropped_leaking_texts.items()}
            | {
                "skipped_records": manifest.skipped_records,
                "skipped_files": manifest.skipped_files,
                "stripped_control_characters": manifest.stripped_control_characters,
            }
            | {
                f"{split}_pii_{kind.lower()}": n
                for split, kinds in manifest.pii_found.items()
                for kind, n in kinds.items()
            }
        )
        mlflow.log_dict(manifest.to_dict(), MANIFEST)
        stage.result = manifest.summary()
    mlflow.MlflowClient().set_tag(parent_run_id, "data_fingerprint", manifest.fingerprint)
    return {"fingerprint": manifest.fingerprint, "labels": manifest.labels, "counts": manifest.counts}
