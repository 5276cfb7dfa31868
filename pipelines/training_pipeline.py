"""The training lifecycle (stages 1-7) as a KFP v2 pipeline. Tasks are only connected here."""


from kfp import dsl

from components import kfp_components as c
from components.config import LifecycleConfig

GPU_STAGES = ("training-environment", "fine-tune", "evaluate")  # device facts must match where training runs


def build_training_pipeline(cfg: LifecycleConfig):
    """The pipeline function for this config: the image and the GPU request come from cfg.kfp."""

    @dsl.pipeline(name=f"{cfg.name}-training", description="Stages 1-7: data, model, environment, fine-tuning, "
                                                              "evaluation, deployment, drift monitoring")
    def training_pipeline(config_json: str, tracking_uri: str, parent_run_id: str = ""):
        run = c.open_parent_run(config_json=config_json, tracking_uri=tracking_uri, parent_run_id=parent_run_id)
        common = {"config_json": config_json, "tracking_uri": tracking_uri, "parent_run_id": run.output}
        data = c.prepare_data(**common)
        init = c.initialise_model(**common, dataset=data.outputs["dataset"])
        env = c.training_environment(**common).after(init)  # the stages run in lifecycle order
        tune = c.fine_tune(**common, dataset=data.outputs["dataset"], init_model=init.outputs["init_model"],
                           environment=env.outputs["environment"])
        evaluation = c.evaluate(**common, dataset=data.outputs["dataset"], environment=env.outputs["environment"],
                                model=tune.outputs["model"])
        for task in (run, data, init, env, tune, evaluation):
            configure_task(task, cfg)
        # Deploy only a challenger, i.e. a model that passed the gate (evaluate returns '' otherwise).
        with dsl.If(evaluation.outputs["Output"] != "", name="gate-passed"):
            deployment = c.deploy(**common, dataset=data.outputs["dataset"], model=tune.outputs["model"],
                                  challenger_version=evaluation.outputs["Output"])
            monitoring = c.monitor(**common, dataset=data.outputs["dataset"],
                                   onnx_model=deployment.outputs["onnx_model"])
            for task in (deployment, monitoring):
                configure_task(task, cfg)

    return training_pipeline


def configure_task(task, cfg: LifecycleConfig) -> None:
    # Stages log to MLflow and read the registry: a cached result would skip both.
    task.set_caching_options(False)
    task.set_container_image(cfg.kfp.image)
    # On several nodes the TrainJob's pods train: the fine-tune task only submits and follows them.
    trains_elsewhere = task.name == "fine-tune" and cfg.train.nodes > 1
    if task.name in GPU_STAGES and cfg.kfp.gpu.count and not trains_elsewhere:
        task.set_accelerator_type(cfg.kfp.gpu.accelerator).set_accelerator_limit(cfg.kfp.gpu.count)
