"""Stage 4's KFP component."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.kfp_tasks import component


@component
def fine_tune(
    config_json: str,
    tracking_uri: str,
    parent_run_id: str,
    dataset: Input[Dataset],
    init_model: Input[Model],
    environment: Input[Artifact],
    model: Output[Model],
):
    from components.fine_tune import adapter

    model.metadata.update(
        adapter.fine_tune(
            config_json, tracking_uri, parent_run_id, dataset.path, init_model.path, environment.path, model.path
        )
    )
