"""The `lifecycle` command: run the pipelines locally, compile and schedule them for a cluster, serve the
champion, watch it for drift, open the MLflow UI."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

DEFAULT_CONFIG = "configs/sms_spam.yaml"
SERVERS = ("serve", "ui", "tracking-server")  # their output is their log: shown, not captured
OFFLINE = ("compile", "schedule")  # they need no tracking server


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done (a gate that said no included), 1 a stage failed, 2 a mistake the user can fix."""
    args = _parser().parse_args(argv)
    from components.errors import LifecycleError, RunFailure
    from pipelines.console import capturing
    from pipelines.local import PipelineFailed

    with capturing(args.verbose, capture_output=args.command not in SERVERS) as console:
        args.console = console
        try:
            return args.handler(args)
        except LifecycleError as err:
            if not (console.last_error or "").endswith(str(err)):  # a stage run here has said it already
                console.error(f"error: {err}")
            return 2
        except RunFailure as err:  # a stage run in this process (`monitor`) failed, through no mistake of the user
            console.error(f"{args.command} failed: {err}. Full log: {console.log_path}")
            return 1
        except PipelineFailed as err:  # the failing stage has said why, unless kfp.local itself failed
            if not console.last_error:
                console.error(f"error: {err}")
            console.error(f"{args.command} failed: {err.outcome}. Full log: {console.log_path}")
            if not console.users_error and args.resume_command:  # a crash: resuming may do
                console.error(f"to resume it  {args.resume_command}")
            return 2 if console.users_error else 1
        except KeyboardInterrupt as err:  # the MLflow runs are marked FAILED on the way out; `run --resume` goes on
            stopped = "stopped (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
            console.error(f"{args.command}: {stopped}. Full log: {console.log_path}")
            if args.resume_command:
                console.error(f"to resume it  {args.resume_command}")
            return 143 if isinstance(err, Terminated) else 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lifecycle", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="command")

    def with_config(sub):
        sub.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            help="stream everything (KFP's task logs, the libraries' messages) as well as the log file",
        )
        sub.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
        sub.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            dest="overrides",
            help="override a config key by its dotted path, e.g. train.epochs=2 (repeatable)",
        )
        return sub

    run = with_config(commands.add_parser("run", help="run stages 1-7 locally through kfp.local"))
    run.add_argument("--resume", metavar="RUN_ID", help="resume an interrupted run from its last checkpoint")
    run.set_defaults(handler=_run)
    tune = with_config(
        commands.add_parser(
            "tune",
            help="stages 1-7 with stage 4 as a hyper-parameter search (the "
            "config's tune section); the best trial by validation loss "
            "goes on like a run's model",
        )
    )
    tune.add_argument("--resume", metavar="RUN_ID", help="resume an interrupted sweep: finished trials are kept")
    tune.set_defaults(handler=_run)
    compile_ = with_config(commands.add_parser("compile", help="write the training and monitor pipelines' KFP YAML"))
    compile_.add_argument(
        "-o",
        "--output",
        default="pipeline.yaml",
        help="training pipeline: a .yaml file, or a directory for pipeline.yaml (default %(default)s)",
    )
    compile_.add_argument(
        "--monitor-output", help="monitor pipeline (default: monitor_pipeline.yaml beside the training pipeline)"
    )
    compile_.add_argument(
        "--sweep-output", help="sweep pipeline (default: sweep_pipeline.yaml beside the training pipeline)"
    )
    compile_.set_defaults(handler=_compile)
    monitor = with_config(commands.add_parser("monitor", help="one drift check of the champion, now"))
    monitor.add_argument("--current", metavar="FILE", help="texts to check (default: the prediction log window)")
    monitor.set_defaults(handler=_monitor)
    watch = with_config(commands.add_parser("watch", help="run the monitor pipeline on a timer, here"))
    watch.add_argument("--every", default="1h", help="interval: 90s, 30m, 1h, 1d (default 1h)")
    watch.add_argument("--once", action="store_true", help="one monitor run now, then exit")
    watch.set_defaults(handler=_watch)
    schedule = with_config(commands.add_parser("schedule", help="a KFP recurring run of the monitor pipeline"))
    schedule.add_argument("--host", required=True, help="the KFP API endpoint, e.g. http://localhost:8080")
    schedule.add_argument("--cron", required=True, help='cron, 5 fields ("0 * * * *") or KFP\'s 6 (seconds first)')
    schedule.add_argument("--experiment", help="KFP experiment (default: tracking.experiment)")
    schedule.set_defaults(handler=_schedule)
    demo = with_config(
        commands.add_parser(
            "demo-drift", help="replay normal then shifted traffic: drift -> alert -> retraining -> gate"
        )
    )
    demo.add_argument("--work-dir", default="work/demo-drift", help="the demo's own work dir (default %(default)s)")
    demo.set_defaults(handler=_demo)
    serve = with_config(commands.add_parser("serve", help="serve a registered ONNX model over HTTP (KServe V2)"))
    serve.add_argument("--model", help="models:/NAME@ALIAS or models:/NAME/VERSION (default: the champion)")
    serve.add_argument(
        "--port", type=int, help="HTTP port (default serve.port; gRPC on the next one, metrics on the one after)"
    )
    serve.set_defaults(handler=_serve)
    rollback = with_config(commands.add_parser("rollback", help="put the previous champion back"))
    rollback.set_defaults(handler=_rollback)
    rollout = with_config(
        commands.add_parser(
            "rollout", help="a new champion on trial on live traffic: its evidence, or a person's decision"
        )
    )
    rollout.add_argument(
        "action",
        choices=["status", "promote", "abort"],
        help="status: the evidence and what the monitor would decide now (changes nothing); "
        "promote: the candidate becomes the champion now; abort: it is rolled back",
    )
    rollout.set_defaults(handler=_rollout)
    ui = with_config(commands.add_parser("ui", help="start the MLflow UI on the project's tracking store"))
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(handler=_ui)
    server = commands.add_parser("tracking-server", help="an MLflow server on PostgreSQL here, as on a cluster")
    server.add_argument(
        "--dir", default="work/tracking-server", help="its database and artifacts (default %(default)s)"
    )
    server.add_argument("--port", type=int, default=5001, help="HTTP port (default %(default)s)")
    server.add_argument(
        "--artifacts",
        metavar="URI",
        help="its artifact store, e.g. s3://BUCKET/mlflow (credentials "
        "and MLFLOW_S3_ENDPOINT_URL from the environment; "
        "default: a folder in --dir)",
    )
    server.set_defaults(handler=_tracking_server, verbose=False)
    for name, sub in commands.choices.items():
        sub.set_defaults(command=name)
    parser.set_defaults(resume_command=None)  # `run` sets it once its MLflow run exists
    return parser


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


def _run(args) -> int:
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
    lines = [
        f"MLflow        {result.tracking_uri}",
        f"  experiment  {cfg.tracking.experiment} (id {result.experiment_id}); parent run {result.parent_run_id}",
        f"  UI          lifecycle ui  ->  {ui_link('http://127.0.0.1:5000', result.experiment_id, result.parent_run_id)}",
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


def _compile(args) -> int:
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


def _monitor(args) -> int:
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


def _watch(args) -> int:
    from pipelines.watch import monitor_once, watch

    cfg = load(args)
    if args.once:
        monitor_once(cfg)
        return 0
    watch(cfg, args.every)
    return 0


def _schedule(args) -> int:
    from pipelines.watch import schedule

    cfg = load(args, absolute=False)  # the recurring run's pods have their own disks
    args.console.show(schedule(cfg, args.host, args.cron, args.experiment))
    return 0


def _demo(args) -> int:
    from pipelines.demo import demo_drift

    cfg = load(args)
    demo_drift(cfg.model_copy(update={"work_dir": str(Path(args.work_dir).resolve())}))
    return 0


def _serve(args) -> int:
    import mlflow

    from components.deploy.serving import SERVER_PORTS, Follow, Limits, check_ports_free, resolve_bundle, serve
    from components.handoff import model_uri
    from components.pii import HASH, LogPii, log_hash_key
    from components.registry import CHAMPION
    from pipelines.local import tracking_uri_for

    cfg = load(args)
    port = args.port or cfg.serve.port
    check_ports_free(cfg.serve.host, port)  # before the model is downloaded
    if cfg.serve.log_pii == HASH:
        log_hash_key(cfg.serve.log_pii_key_env)
    mlflow.set_tracking_uri(tracking_uri_for(cfg))
    served = args.model or model_uri(cfg.tracking.registered_model, CHAMPION)
    downloads = Path(cfg.work_dir) / "serving"
    bundle, name, version = resolve_bundle(served, downloads)
    _, _, alias = served.partition("@")
    follow = Follow(alias, cfg.serve.follow_seconds, str(downloads)) if alias else None
    log = cfg.predictions_uri()
    following = (
        (
            f"; follows @{alias}"
            + (" and its rollouts" if alias == CHAMPION else "")
            + f" (every {cfg.serve.follow_seconds:g} s)"
        )
        if follow
        else ""
    )
    metrics_port = port + SERVER_PORTS["metrics"]
    args.console.show(
        f"serving {served} (version {version}{following}) on http://{cfg.serve.host}:{port}: POST "
        f"/v2/models/{name}/infer, POST /predict; metrics on :{metrics_port}/metrics; predictions "
        f"logged to {log} (personal data: {cfg.serve.log_pii})"
    )
    serve(
        bundle,
        name,
        version,
        port,
        log,
        Limits(cfg.serve.max_batch, cfg.serve.max_text_chars, cfg.serve.max_request_bytes),
        (cfg.serve.log_flush_texts, cfg.serve.log_flush_seconds),
        cfg.serve.host,
        follow,
        LogPii.of(cfg),
    )
    return 0


def _rollback(args) -> int:
    import mlflow

    from components.registry import rollback
    from pipelines.local import tracking_uri_for

    cfg = load(args)
    mlflow.set_tracking_uri(tracking_uri_for(cfg))
    champion, demoted = rollback(cfg.tracking.registered_model)
    args.console.show(
        f"{cfg.tracking.registered_model}: champion is version {champion} again; version {demoted} is "
        f"now 'previous' (a second rollback undoes this). Servers of @champion answer with version "
        f"{champion} within serve.follow_seconds ({cfg.serve.follow_seconds:g} s)."
    )
    return 0


def _rollout(args) -> int:
    import mlflow

    from components.decision import Decision
    from components.monitor.rollout import check_rollout
    from components.registry import RegistryError
    from monitoring.rollout import PROMOTE, ROLLBACK
    from pipelines.local import tracking_uri_for

    cfg = load(args)
    mlflow.set_tracking_uri(tracking_uri_for(cfg))
    by_hand = {
        "promote": Decision(PROMOTE, "promoted by hand (lifecycle rollout promote)"),
        "abort": Decision(ROLLBACK, "aborted by hand (lifecycle rollout abort)"),
    }.get(args.action)
    check = check_rollout(cfg, by_hand=by_hand, record=args.action != "status")
    if check is None:
        if args.action != "status":
            raise RegistryError(
                f"registered model {cfg.tracking.registered_model!r} has no rollout running (no "
                "version with the alias 'candidate')"
            )
        args.console.show(f"{cfg.tracking.registered_model}: no rollout running")
        return 0
    e = check.evidence
    p99 = lambda ms: f"{ms:.1f} ms" if ms is not None else "-"  # noqa: E731
    args.console.show(
        "\n".join(
            [
                f"{cfg.tracking.registered_model}: version {e.candidate} in {e.mode} beside champion {e.champion}, since "
                f"{e.started:%Y-%m-%d %H:%M} UTC",
                f"  scored        champion {e.champion_scored} texts ({e.champion_failed} failed, p99 "
                f"{p99(e.champion_p99_ms)}); candidate {e.candidate_scored} ({e.candidate_failed} failed, p99 "
                f"{p99(e.candidate_p99_ms)})",
                f"  paired        {e.paired} texts, agreement {e.agreement:.1%}; {e.labelled} labelled: accuracy champion "
                f"{e.champion_accuracy:.4f}, candidate {e.candidate_accuracy:.4f}, exact McNemar p = {e.p_value:.3g}",
                ("  decision now  " if args.action == "status" else "  done          ")
                + f"{check.decision.value}: {check.decision.reason}",
                *([f"  MLflow run    {check.run_id}"] if check.run_id else []),
            ]
        )
    )
    return 0


def _ui(args) -> int:
    from components.tracking import is_tracking_server, ui_link, use_config_experiment
    from pipelines.local import tracking_uri_for
    from pipelines.processes import run_until_stopped

    cfg = load(args)
    uri = tracking_uri_for(cfg)
    experiment_id = use_config_experiment(cfg, uri)
    if is_tracking_server(uri):
        args.console.show(f"the tracking server serves the MLflow UI itself: open {ui_link(uri, experiment_id)}")
        return 0
    # One worker on one machine; the UI runs in a process group of its own, which Ctrl-C and SIGTERM stop whole.
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--port",
        str(args.port),
        "--workers",
        "1",
    ]
    args.console.show(" ".join(command))
    args.console.show(f"open {ui_link(f'http://127.0.0.1:{args.port}', experiment_id)}")
    return run_until_stopped(command)


def _tracking_server(args) -> int:
    from pipelines.tracking_server import run_tracking_server

    run_tracking_server(args.dir, args.port, args.artifacts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
