"""Stage 2's KFP component."""

from kfp.dsl import Dataset, Input, Model, Output

from components.kfp_tasks import component


@component
def model(config_json: str, tracking_uri: str, parent_run_id: str, dataset: Input[Dataset], init_model: Output[Model]):
    from components.model import adapter

    init_model.metadata.update(adapter.model(config_json, tracking_uri, parent_run_id, dataset.path, init_model.path))
