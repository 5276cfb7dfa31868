"""The training lifecycle (stages 1-7) as a KFP v2 pipeline. Tasks are only connected here; each stage's component
comes from the table of stages."""

from kfp import dsl

from components.config import LifecycleConfig
from components.kfp_base import open_parent_run
from components.stages import DATA, DEPLOY, ENVIRONMENT, EVALUATE, FINE_TUNE, MODEL, MONITOR, by_task_name


def build_training_pipeline(cfg: LifecycleConfig):
    """The pipeline function for this config: the image and the GPU request come from cfg.kfp."""

    @dsl.pipeline(name=f"{cfg.name}-training", description="Stages 1-7: data, model, environment, fine-tuning, "
                                                              "evaluation, deployment, drift monitoring")
    def training_pipeline(config_json: str, tracking_uri: str, parent_run_id: str = ""):
        run = open_parent_run(config_json=config_json, tracking_uri=tracking_uri, parent_run_id=parent_run_id)
        common = {"config_json": config_json, "tracking_uri": tracking_uri, "parent_run_id": run.output}
        data = DATA.component()(**common)
        dataset = data.outputs["dataset"]
        init = MODEL.component()(**common, dataset=dataset)
        env = ENVIRONMENT.component()(**common).after(init)  # the stages run in lifecycle order
        tune = FINE_TUNE.component()(**common, dataset=dataset, init_model=init.outputs["init_model"],
                                     environment=env.outputs["environment"])
        evaluation = EVALUATE.component()(**common, dataset=dataset, environment=env.outputs["environment"],
                                          model=tune.outputs["model"])
        for task in (run, data, init, env, tune, evaluation):
            configure_task(task, cfg)
        # Deploy only a challenger: a model that passed the gate.
        with dsl.If(evaluation.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (KFP's condition)
            deployment = DEPLOY.component()(**common, dataset=dataset, model=tune.outputs["model"],
                                            evaluation=evaluation.outputs["report"])
            monitoring = MONITOR.component()(**common, dataset=dataset, onnx_model=deployment.outputs["onnx_model"])
            for task in (deployment, monitoring):
                configure_task(task, cfg)

    return training_pipeline


def configure_task(task, cfg: LifecycleConfig) -> None:
    # Stages log to MLflow and read the registry: a cached result would skip both.
    task.set_caching_options(False)
    task.set_container_image(cfg.kfp.image)
    stage = by_task_name(task.name)
    # On several nodes the TrainJob's pods train: the fine-tune task only submits and follows them.
    trains_elsewhere = stage is FINE_TUNE and cfg.train.nodes > 1
    if stage and stage.wants_gpu and cfg.kfp.gpu.count and not trains_elsewhere:
        task.set_accelerator_type(cfg.kfp.gpu.accelerator).set_accelerator_limit(cfg.kfp.gpu.count)
