"""Stage 7's KFP components: in a training run, and the monitor pipeline's check of served traffic."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Model, Output

from components.kfp_tasks import component


@component
def monitor(
    config_json: str,
    tracking_uri: str,
    parent_run_id: str,
    dataset: Input[Dataset],
    onnx_model: Input[Model],
    drift: Output[Artifact],
    drift_report: Output[HTML],
):
    """The new champion's drift reference against the test split."""
    from components.handoff import bundle_dir, copy_drift_report
    from components.monitor import adapter

    drift.metadata.update(
        adapter.monitor(
            config_json, tracking_uri, parent_run_id, dataset.path, str(bundle_dir(onnx_model.path)), drift.path
        )
    )
    copy_drift_report(drift.path, drift_report.path)


@component
def monitor_traffic(
    config_json: str,
    tracking_uri: str,
    current_path: str,
    monitor_run_id: str,
    drift: Output[Artifact],
    drift_report: Output[HTML],
) -> str:
    """The champion against served traffic; returns the retraining's parent run id or ''."""
    from components.handoff import copy_drift_report
    from components.monitor import adapter

    retraining_run = adapter.monitor_traffic(config_json, tracking_uri, current_path, monitor_run_id, drift.path)
    copy_drift_report(drift.path, drift_report.path)
    return retraining_run
