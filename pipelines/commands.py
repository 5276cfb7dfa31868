"""What each `lifecycle` command does that runs or inspects the pipelines: run and tune (stages 1-7 through
kfp.local), compile, config, monitor, watch, schedule and the drift demo. pipelines/cli.py parses the command line
and maps each command to its function here or in server_commands.py."""

from __future__ import annotations

import signal
from pathlib import Path

DEFAULT_CONFIG = "configs/sms_spam.yaml"
OFFLINE = ("compile", "schedule", "config")  # they need no tracking server


def load(args, absolute: bool = True):
    """The validated config, with work_dir made absolute (stages run in other processes) unless `absolute` is
    False (a compiled pipeline must hold no path of this machine); the command's log file goes in work_dir."""
    from components.config import load_config
    from components.tracking import check_reachable
    from pipelines.local import tracking_uri_for

    cfg = load_config(args.config, args.overrides)
    args.console.open_log(cfg.work_dir, args.command)
    if args.command not in OFFLINE:
        check_reachable(tracking_uri_for(cfg))
    return cfg.model_copy(update={"work_dir": str(Path(cfg.work_dir).resolve())}) if absolute else cfg


def run_command(args) -> int:
    from components.handoff import model_uri, version_uri
    from components.registry import CANDIDATE, CHAMPION
    from components.tracking import ui_link
    from pipelines.local import config_of_run, run_locally, tracking_uri_for

    signal.signal(signal.SIGTERM, _terminated)
    cfg = load(args)
    if args.resume:  # the run's own config, with this machine's work_dir (the checkpoints are at their URI)
        cfg = config_of_run(args.resume, tracking_uri_for(cfg)).model_copy(update={"work_dir": cfg.work_dir})
    args.console.show(f"log           {args.console.log_path}")

    def started(run_id: str) -> None:
        args.resume_command = _resume_command(args, run_id)
        args.console.show(f"MLflow run    {run_id} (after an interruption: {args.resume_command})")

    result = run_locally(cfg, resume_run_id=args.resume, on_start=started, sweep=args.command == "tune")
    name = result.registered_model
    alias = ", alias challenger" if result.gate == "passed" else ", no alias: the champion stays"
    ui = ui_link("http://127.0.0.1:5000", result.experiment_id, result.parent_run_id)
    lines = [
        f"MLflow        {result.tracking_uri}",
        f"  experiment  {cfg.tracking.experiment} (id {result.experiment_id}); parent run {result.parent_run_id}",
        f"  UI          lifecycle ui  ->  {ui}",
        f"registered    {version_uri(name, result.model_version)} (PyTorch; gate {result.gate}{alias})",
    ]
    if result.champion_version:
        lines += [
            f"deployed      {version_uri(name, result.champion_version)} (ONNX, alias {CHAMPION})",
            f"  serve it    lifecycle serve --model {model_uri(name, CHAMPION)}",
        ]
    if result.candidate_version:
        lines += [
            f"deployed      {version_uri(name, result.candidate_version)} (ONNX, alias {CANDIDATE}: a "
            f"{cfg.deploy.rollout.mode} rollout beside the champion; servers of @{CHAMPION} take it up)",
            "  follow it   lifecycle rollout status",
        ]
    if result.sweep_winner:
        lines += [
            f"sweep         {result.sweep_winner} won (by validation loss); its settings: the sweep run's "
            f"sweep/best_config.yaml"
        ]
    lines.append(f"artifacts     {result.artifacts_dir}")
    args.console.show("\n" + "\n".join(lines))
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping us), which ends a run as Ctrl-C does: its MLflow runs FAILED, resumable."""


def _terminated(*_) -> None:
    import psutil

    # kfp.local waits for the running stage's process, which a SIGTERM to this process alone would leave running.
    for process in psutil.Process().children(recursive=True):
        try:
            process.terminate()
        except psutil.Error:
            pass  # it ended meanwhile
    raise Terminated()


def _resume_command(args, run_id: str) -> str:
    """The command that resumes `run_id`: this one's --config and --set (the work_dir and tracking server to
    reach), with --resume."""
    import shlex

    given = [
        *(("--config", args.config) if args.config != DEFAULT_CONFIG else ()),
        *(part for setting in args.overrides for part in ("--set", setting)),
    ]
    return shlex.join(["lifecycle", args.command, *given, "--resume", run_id])


def compile_command(args) -> int:
    from kfp import compiler

    from pipelines.monitor_pipeline import build_monitor_pipeline
    from pipelines.training_pipeline import build_sweep_pipeline, build_training_pipeline

    cfg = load(args, absolute=False)
    training = _yaml_path(args.output, "pipeline.yaml")
    monitor = _yaml_path(args.monitor_output or str(Path(training).parent), "monitor_pipeline.yaml")
    sweep = _yaml_path(args.sweep_output or str(Path(training).parent), "sweep_pipeline.yaml")
    for build, path in (
        (build_training_pipeline, training),
        (build_monitor_pipeline, monitor),
        (build_sweep_pipeline, sweep),
    ):
        compiler.Compiler().compile(
            build(cfg), package_path=path, pipeline_parameters={"config_json": cfg.model_dump_json()}
        )
        args.console.show(f"wrote {path}")
    return 0


def _yaml_path(output: str, name: str) -> str:
    """`compile -o` takes a file (.yaml or .yml) or a directory to write `name` in."""
    from components.config import ConfigError

    if output.endswith(("/", "\\")) or Path(output).is_dir():
        Path(output).mkdir(parents=True, exist_ok=True)
        return str(Path(output) / name)
    if not output.endswith((".yaml", ".yml")):
        raise ConfigError(f"{output}: expected a .yaml file or a directory to write {name} in")
    return output


def config_command(args) -> int:
    """The resolved config with each key's value, default and meaning; or one key's (or section's)."""
    from components.config.explain import explain_config, explain_key
    from components.tracking import check_reachable
    from pipelines.local import config_of_run, tracking_uri_for

    cfg = load(args, absolute=False)
    if args.run:  # what that run was given (its config artifact), not what the file says now
        check_reachable(tracking_uri_for(cfg))
        cfg = config_of_run(args.run, tracking_uri_for(cfg))
    args.console.show(explain_key(cfg, args.explain) if args.explain else explain_config(cfg))
    return 0


def monitor_command(args) -> int:
    import tempfile

    from components.handoff import drift_report_path
    from components.monitor.adapter import monitor_traffic
    from pipelines.local import tracking_uri_for

    cfg = load(args)
    Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
    out_dir = tempfile.mkdtemp(prefix="drift-", dir=Path(cfg.work_dir))
    monitor_traffic(cfg.model_dump_json(), tracking_uri_for(cfg), args.current or "", "", out_dir, act_on_drift=False)
    args.console.show(f"report: {drift_report_path(out_dir)} (also in MLflow under the monitor run's drift/ artifacts)")
    return 0


def watch_command(args) -> int:
    from pipelines.watch import monitor_once, watch

    cfg = load(args)
    if args.once:
        monitor_once(cfg)
        return 0
    watch(cfg, args.every)
    return 0


def schedule_command(args) -> int:
    from pipelines.watch import schedule

    cfg = load(args, absolute=False)  # the recurring run's pods have their own disks
    args.console.show(schedule(cfg, args.host, args.cron, args.experiment))
    return 0


def demo_command(args) -> int:
    from pipelines.demo import demo_drift

    cfg = load(args)
    demo_drift(cfg.model_copy(update={"work_dir": str(Path(args.work_dir).resolve())}), args.shifted)
    return 0
