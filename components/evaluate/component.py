"""Stage 5's KFP component."""

from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from components.kfp_tasks import component


@component
def evaluate(
    config_json: str,
    tracking_uri: str,
    parent_run_id: str,
    dataset: Input[Dataset],
    environment: Input[Artifact],
    model: Input[Model],
    report: Output[Artifact],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    model_card: Output[Markdown],
) -> bool:
    """Whether the gate passed; the version registered is in the report (components.handoff.read_gate)."""
    import shutil

    from components.evaluate import adapter
    from components.handoff import model_card_path

    result = adapter.evaluate(
        config_json, tracking_uri, parent_run_id, dataset.path, environment.path, model.path, report.path
    )
    for name, value in result["metrics"].items():
        metrics.log_metric(name, value)
    if "confusion" in result:  # a classifier's
        classification.log_confusion_matrix(result["labels"], result["confusion"])
    shutil.copy(model_card_path(report.path), model_card.path)
    return result["gate_passed"]
