"""The `lifecycle` command: run the pipelines locally, compile and schedule them for a cluster, serve the
champion, watch it for drift, open the MLflow UI, explain the config."""

from __future__ import annotations

import argparse
import sys

from pipelines import commands, server_commands
from pipelines.commands import DEFAULT_CONFIG, Terminated

SERVERS = ("serve", "ui", "tracking-server")  # their output is their log: shown, not captured


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done (a gate that said no included), 1 a stage failed, 2 a mistake the user can fix."""
    args = parser().parse_args(argv)
    from components.errors import LifecycleError, RunFailure
    from pipelines.local import PipelineFailed
    from pipelines.terminal import capturing

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


def parser() -> argparse.ArgumentParser:
    """Every command with its arguments and the function that carries it out (its `handler`)."""
    top = argparse.ArgumentParser(prog="lifecycle", description=__doc__)
    subcommands = top.add_subparsers(required=True, metavar="command")
    _pipeline_commands(subcommands)
    _monitoring_commands(subcommands)
    _server_commands(subcommands)
    for name, sub in subcommands.choices.items():
        sub.set_defaults(command=name)
    top.set_defaults(resume_command=None)  # `run` sets it once its MLflow run exists
    return top


def _with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
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


def _pipeline_commands(subcommands) -> None:
    run = _with_config(subcommands.add_parser("run", help="run stages 1-7 locally through kfp.local"))
    run.add_argument("--resume", metavar="RUN_ID", help="resume an interrupted run from its last checkpoint")
    run.set_defaults(handler=commands.run_command)
    tune = _with_config(
        subcommands.add_parser(
            "tune",
            help="stages 1-7 with stage 4 as a hyper-parameter search (the config's tune section); the best trial "
            "by validation loss goes on like a run's model",
        )
    )
    tune.add_argument("--resume", metavar="RUN_ID", help="resume an interrupted sweep: finished trials are kept")
    tune.set_defaults(handler=commands.run_command)
    compile_ = _with_config(subcommands.add_parser("compile", help="write the pipelines' KFP YAML"))
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
    compile_.set_defaults(handler=commands.compile_command)
    config = _with_config(
        subcommands.add_parser(
            "config", help="the resolved config with each key's value, default and meaning (as YAML)"
        )
    )
    config.add_argument("--explain", metavar="KEY", help="one key (train.epochs) or section (train) in detail")
    config.add_argument("--run", metavar="RUN_ID", help="the config a run of the tracking store was given")
    config.set_defaults(handler=commands.config_command)


def _monitoring_commands(subcommands) -> None:
    monitor = _with_config(subcommands.add_parser("monitor", help="one drift check of the champion, now"))
    monitor.add_argument("--current", metavar="FILE", help="texts to check (default: the prediction log window)")
    monitor.set_defaults(handler=commands.monitor_command)
    watch = _with_config(subcommands.add_parser("watch", help="run the monitor pipeline on a timer, here"))
    watch.add_argument("--every", default="1h", help="interval: 90s, 30m, 1h, 1d (default 1h)")
    watch.add_argument("--once", action="store_true", help="one monitor run now, then exit")
    watch.set_defaults(handler=commands.watch_command)
    schedule = _with_config(subcommands.add_parser("schedule", help="a KFP recurring run of the monitor pipeline"))
    schedule.add_argument("--host", required=True, help="the KFP API endpoint, e.g. http://localhost:8080")
    schedule.add_argument("--cron", required=True, help='cron, 5 fields ("0 * * * *") or KFP\'s 6 (seconds first)')
    schedule.add_argument("--experiment", help="KFP experiment (default: tracking.experiment)")
    schedule.set_defaults(handler=commands.schedule_command)
    demo = _with_config(
        subcommands.add_parser(
            "demo-drift", help="replay normal then shifted traffic: drift -> alert -> retraining -> gate"
        )
    )
    demo.add_argument("--work-dir", default="work/demo-drift", help="the demo's own work dir (default %(default)s)")
    demo.add_argument(
        "--shifted",
        help="a generator's shifted prompts: a file of the SMS Spam Collection's format (default: downloaded as "
        "configs/sms_spam.yaml does), e.g. ../shared/data/sms_spam/SMSSpamCollection",
    )
    demo.set_defaults(handler=commands.demo_command)


def _server_commands(subcommands) -> None:
    serve = _with_config(subcommands.add_parser("serve", help="serve a registered ONNX model over HTTP (KServe V2)"))
    serve.add_argument("--model", help="models:/NAME@ALIAS or models:/NAME/VERSION (default: the champion)")
    serve.add_argument(
        "--port", type=int, help="HTTP port (default serve.port; gRPC on the next one, metrics on the one after)"
    )
    serve.set_defaults(handler=server_commands.serve_command)
    rollback = _with_config(subcommands.add_parser("rollback", help="put the previous champion back"))
    rollback.set_defaults(handler=server_commands.rollback_command)
    rollout = _with_config(
        subcommands.add_parser(
            "rollout", help="a new champion on trial on live traffic: its evidence, or a person's decision"
        )
    )
    rollout.add_argument(
        "action",
        choices=["status", "promote", "abort"],
        help="status: the evidence and what the monitor would decide now (changes nothing); "
        "promote: the candidate becomes the champion now; abort: it is rolled back",
    )
    rollout.set_defaults(handler=server_commands.rollout_command)
    ui = _with_config(subcommands.add_parser("ui", help="start the MLflow UI on the project's tracking store"))
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(handler=server_commands.ui_command)
    server = subcommands.add_parser("tracking-server", help="an MLflow server on PostgreSQL here, as on a cluster")
    server.add_argument(
        "--dir", default="work/tracking-server", help="its database and artifacts (default %(default)s)"
    )
    server.add_argument("--port", type=int, default=5001, help="HTTP port (default %(default)s)")
    server.add_argument(
        "--artifacts",
        metavar="URI",
        help="its artifact store, e.g. s3://BUCKET/mlflow (credentials and MLFLOW_S3_ENDPOINT_URL from the "
        "environment; default: a folder in --dir)",
    )
    server.set_defaults(handler=server_commands.tracking_server_command, verbose=False)


if __name__ == "__main__":
    sys.exit(main())
