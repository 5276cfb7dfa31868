"""Stage 3's KFP component."""

from kfp.dsl import Artifact, Output

from components.kfp_tasks import component


@component
def environment(config_json: str, tracking_uri: str, parent_run_id: str, environment: Output[Artifact]):
    from components.environment import adapter

    environment.metadata.update(adapter.environment(config_json, tracking_uri, parent_run_id, environment.path))
