"""The sweep's KFP components: the study, a worker (the stage's component), the selection of the winner."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.kfp_tasks import component


@component
def sweep_study(config_json: str, tracking_uri: str, parent_run_id: str, study: Output[Artifact]):
    from components.sweep import adapter

    adapter.sweep_study(config_json, tracking_uri, parent_run_id, study.path)


# The workers get the parent run's id in the study artifact, not as a parameter: inside a ParallelFor, kfp.local
# 2.17 replaces every parameter that comes from another task's output by the loop's item.
@component
def sweep(
    config_json: str,
    tracking_uri: str,
    study: Input[Artifact],
    dataset: Input[Dataset],
    init_model: Input[Model],
    environment: Input[Artifact],
    worker: int,
) -> int:
    from components.sweep import adapter

    return adapter.sweep(config_json, tracking_uri, study.path, dataset.path, init_model.path, environment.path, worker)


@component
def sweep_select(config_json: str, tracking_uri: str, parent_run_id: str, model: Output[Model]) -> str:
    from components.sweep import adapter

    return adapter.sweep_select(config_json, tracking_uri, parent_run_id, model.path)
