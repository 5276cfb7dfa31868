"""The training lifecycle (stages 1-7) as a KFP v2 pipeline, and the sweep: the same stages with stage 4 as an
Optuna search whose workers run in a ParallelFor. Tasks are only connected here; each stage's component comes from
the table of stages."""

from kfp import dsl

from components.config import LifecycleConfig
from components.kfp_tasks import open_parent_run
from components.stages import DATA, DEPLOY, ENVIRONMENT, EVALUATE, FINE_TUNE, MODEL, MONITOR, SWEEP, by_task_name
from components.tracking import SWEEP_RUN_KIND


def build_training_pipeline(cfg: LifecycleConfig):
    """The pipeline function for this config: the image and the GPU request come from cfg.kfp."""

    @dsl.pipeline(
        name=f"{cfg.name}-training",
        description="Stages 1-7: data, model, environment, fine-tuning, evaluation, deployment, drift monitoring",
    )
    def training_pipeline(config_json: str, tracking_uri: str, parent_run_id: str = ""):
        common, inputs = prepare(cfg, config_json, tracking_uri, parent_run_id)
        tune = FINE_TUNE.component()(**common, **inputs)
        configure_task(tune, cfg)
        evaluate_and_deploy(cfg, common, inputs, tune.outputs["model"])

    return training_pipeline


def build_sweep_pipeline(cfg: LifecycleConfig):
    """Stages 1-3, the study, cfg.tune.parallel workers sharing it (pods on a cluster, each with its GPU), the
    winner, then stages 5-7 with the winner's config as a run's."""
    from components.sweep.component import sweep_select, sweep_study

    @dsl.pipeline(
        name=f"{cfg.name}-sweep",
        description="Stages 1-7 with stage 4 as a hyper-parameter search: "
        "an Optuna study whose trials are nested MLflow runs",
    )
    def sweep_pipeline(config_json: str, tracking_uri: str, parent_run_id: str = ""):
        common, inputs = prepare(cfg, config_json, tracking_uri, parent_run_id, kind=SWEEP_RUN_KIND)
        study = sweep_study(**common).after(inputs["environment"].task)
        configure_task(study, cfg)
        with dsl.ParallelFor(
            items=list(range(cfg.tune.parallel)), parallelism=cfg.tune.parallel, name="sweep-workers"
        ) as worker:
            workers = SWEEP.component()(
                config_json=config_json,
                tracking_uri=tracking_uri,
                study=study.outputs["study"],
                **inputs,
                worker=worker,
            )
            configure_task(workers, cfg)
        winner = sweep_select(**common).after(workers)
        configure_task(winner, cfg)
        evaluate_and_deploy(cfg, common | {"config_json": winner.outputs["Output"]}, inputs, winner.outputs["model"])

    return sweep_pipeline


def prepare(cfg: LifecycleConfig, config_json: str, tracking_uri: str, parent_run_id: str, kind: str = ""):
    """The parent run and stages 1-3: (the arguments every stage takes, stage 4's inputs)."""
    run = open_parent_run(config_json=config_json, tracking_uri=tracking_uri, parent_run_id=parent_run_id, kind=kind)
    common = {"config_json": config_json, "tracking_uri": tracking_uri, "parent_run_id": run.output}
    data = DATA.component()(**common)
    dataset = data.outputs["dataset"]
    init = MODEL.component()(**common, dataset=dataset)
    env = ENVIRONMENT.component()(**common).after(init)  # the stages run in lifecycle order
    for task in (run, data, init, env):
        configure_task(task, cfg)
    return common, {
        "dataset": dataset,
        "init_model": init.outputs["init_model"],
        "environment": env.outputs["environment"],
    }


def evaluate_and_deploy(cfg: LifecycleConfig, common: dict, inputs: dict, model) -> None:
    """Stage 5 on the fine-tuned model; stages 6 and 7 only for a challenger (a model that passed the gate)."""
    dataset = inputs["dataset"]
    evaluation = EVALUATE.component()(**common, dataset=dataset, environment=inputs["environment"], model=model)
    configure_task(evaluation, cfg)
    with dsl.If(evaluation.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (KFP's condition)
        deployment = DEPLOY.component()(**common, dataset=dataset, model=model, evaluation=evaluation.outputs["report"])
        monitoring = MONITOR.component()(**common, dataset=dataset, onnx_model=deployment.outputs["onnx_model"])
        for task in (deployment, monitoring):
            configure_task(task, cfg)


def configure_task(task, cfg: LifecycleConfig) -> None:
    # Stages log to MLflow and read the registry: a cached result would skip both.
    task.set_caching_options(False)
    task.set_container_image(cfg.kfp.image)
    stage = by_task_name(task.name)
    # On several nodes the TrainJob's pods train: the fine-tune task only submits and follows them.
    trains_elsewhere = stage is FINE_TUNE and cfg.train.nodes > 1
    if stage and stage.wants_gpu and cfg.kfp.gpu.count and not trains_elsewhere:
        task.set_accelerator_type(cfg.kfp.gpu.accelerator).set_accelerator_limit(cfg.kfp.gpu.count)
