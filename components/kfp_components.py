"""The KFP v2 components: interfaces only. Each body imports its adapter (components.stages) and calls it.

The image (infra/Dockerfile) has the project installed; the pipeline sets it per task from the config.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

# The project's image holds kfp; don't pip-install it at task start (it also needs no network locally).
component = dsl.component(base_image="python:3.11-slim", install_kfp_package=False)


@component
def prepare_data(config_json: str, tracking_uri: str, parent_run_id: str,
                 dataset: Output[Dataset], data_docs: Output[HTML]):
    import shutil
    from pathlib import Path

    from components.stages import data_stage

    dataset.metadata.update(data_stage(config_json, tracking_uri, parent_run_id, dataset.path))
    shutil.copy(next(Path(dataset.path).glob("validation_*.html")), data_docs.path)


@component
def initialise_model(config_json: str, tracking_uri: str, parent_run_id: str,
                     dataset: Input[Dataset], init_model: Output[Model]):
    from components.stages import model_stage

    init_model.metadata.update(model_stage(config_json, tracking_uri, parent_run_id, dataset.path, init_model.path))


@component
def training_environment(config_json: str, tracking_uri: str, parent_run_id: str, environment: Output[Artifact]):
    from components.stages import environment_stage

    environment.metadata.update(environment_stage(config_json, tracking_uri, parent_run_id, environment.path))


@component
def fine_tune(config_json: str, tracking_uri: str, parent_run_id: str, dataset: Input[Dataset],
              init_model: Input[Model], environment: Input[Artifact], model: Output[Model]):
    from components.stages import training_stage

    model.metadata.update(training_stage(config_json, tracking_uri, parent_run_id, dataset.path, init_model.path,
                                         environment.path, model.path))


@component
def evaluate(config_json: str, tracking_uri: str, parent_run_id: str, dataset: Input[Dataset],
             environment: Input[Artifact], model: Input[Model], report: Output[Artifact], metrics: Output[Metrics],
             classification: Output[ClassificationMetrics], model_card: Output[Markdown]) -> str:
    """Returns the registered version when the gate passed (it became the challenger), else ''."""
    import shutil
    from pathlib import Path

    from components.stages import evaluation_stage

    result = evaluation_stage(config_json, tracking_uri, parent_run_id, dataset.path, environment.path,
                              model.path, report.path)
    for name, value in result["metrics"].items():
        metrics.log_metric(name, value)
    classification.log_confusion_matrix(result["labels"], result["confusion"])
    shutil.copy(Path(report.path) / "model_card.md", model_card.path)
    return result["model_version"] if result["gate_passed"] else ""


@component
def open_parent_run(config_json: str, tracking_uri: str, parent_run_id: str) -> str:
    """The pipeline run's MLflow parent run: the one given (a local run or a resume), else a new one."""
    from components.stages import open_parent_run_stage

    return open_parent_run_stage(config_json, tracking_uri, parent_run_id)


@component
def deploy(config_json: str, tracking_uri: str, parent_run_id: str, dataset: Input[Dataset], model: Input[Model],
           challenger_version: str, onnx_model: Output[Model]) -> str:
    from components.stages import deployment_stage

    result = deployment_stage(config_json, tracking_uri, parent_run_id, dataset.path, model.path,
                              challenger_version, onnx_model.path)
    onnx_model.metadata.update(result)
    return result["model_version"]


@component
def monitor(config_json: str, tracking_uri: str, parent_run_id: str, dataset: Input[Dataset],
            onnx_model: Input[Model], drift: Output[Artifact], drift_report: Output[HTML]):
    """Stage 7 of a training run: the new champion's drift reference against the test split."""
    import shutil
    from pathlib import Path

    from components.handoff import bundle_dir
    from components.monitor_stages import monitoring_stage

    drift.metadata.update(monitoring_stage(config_json, tracking_uri, parent_run_id, dataset.path,
                                           str(bundle_dir(onnx_model.path)), drift.path))
    if (Path(drift.path) / "drift_report.html").is_file():  # absent when the test split is below monitor.min_window
        shutil.copy(Path(drift.path) / "drift_report.html", drift_report.path)


@component
def check_drift(config_json: str, tracking_uri: str, current_path: str, monitor_run_id: str,
                drift: Output[Artifact], drift_report: Output[HTML]) -> str:
    """The monitor's check of the champion against served traffic; returns the retraining's parent run id or ''."""
    import shutil
    from pathlib import Path

    from components.monitor_stages import drift_check_stage

    retraining_run = drift_check_stage(config_json, tracking_uri, current_path, monitor_run_id, drift.path)
    if (Path(drift.path) / "drift_report.html").is_file():  # absent when the window was too small for a verdict
        shutil.copy(Path(drift.path) / "drift_report.html", drift_report.path)
    return retraining_run
