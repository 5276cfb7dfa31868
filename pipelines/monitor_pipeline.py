"""Stage 7 as a KFP v2 pipeline: a running rollout's decision and the drift check -> (drift, alert, retraining
allowed) -> the training pipeline."""

from kfp import dsl

from components.config import LifecycleConfig
from components.monitor.component import monitor_traffic
from pipelines.training_pipeline import build_training_pipeline, configure_task


def build_monitor_pipeline(cfg: LifecycleConfig):
    training_pipeline = build_training_pipeline(cfg)

    @dsl.pipeline(
        name=f"{cfg.name}-monitor",
        description="Drift on served traffic; drift raises an alert and retrains on the configured data plus feedback",
    )
    def monitor_pipeline(config_json: str, tracking_uri: str, current_path: str = "", monitor_run_id: str = ""):
        check = monitor_traffic(
            config_json=config_json, tracking_uri=tracking_uri, current_path=current_path, monitor_run_id=monitor_run_id
        )
        configure_task(check, cfg)
        # check returns the retraining's MLflow parent run (tagged with the alert), or '' when none may start.
        with dsl.If(check.outputs["Output"] != "", name="retrain"):
            training_pipeline(config_json=config_json, tracking_uri=tracking_uri, parent_run_id=check.outputs["Output"])

    return monitor_pipeline
