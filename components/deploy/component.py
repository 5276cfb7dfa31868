"""Stage 6's KFP component."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.kfp_tasks import component


@component
def deploy(
    config_json: str,
    tracking_uri: str,
    parent_run_id: str,
    dataset: Input[Dataset],
    model: Input[Model],
    evaluation: Input[Artifact],
    onnx_model: Output[Model],
) -> str:
    """The champion's registered version."""
    from components.deploy import adapter
    from components.handoff import read_gate

    result = adapter.deploy(
        config_json,
        tracking_uri,
        parent_run_id,
        dataset.path,
        model.path,
        read_gate(evaluation.path).model_version,
        onnx_model.path,
        evaluation.path,
    )
    onnx_model.metadata.update(result)
    return result["model_version"]
