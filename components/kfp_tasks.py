"""What every KFP component of the project shares; each stage's component is in components/<stage>/component.py,
a body of a few lines that imports its adapter and calls it."""

from kfp import dsl

# The project's image (infra/Dockerfile) holds the project and kfp; don't pip-install kfp at task start (it also
# needs no network locally). The pipeline sets the image per task from the config.
component = dsl.component(base_image="python:3.11-slim", install_kfp_package=False)


@component
def open_parent_run(config_json: str, tracking_uri: str, parent_run_id: str, kind: str = "") -> str:
    """The pipeline run's MLflow parent run: the one given (a local run, a resume, a retraining), else a new one
    of this kind ("sweep", or "" for a training run)."""
    from components.config import LifecycleConfig
    from components.tracking import start_parent_run

    return parent_run_id or start_parent_run(
        LifecycleConfig.model_validate_json(config_json), tracking_uri, run_kind=kind
    )
