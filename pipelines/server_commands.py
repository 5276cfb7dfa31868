"""What each `lifecycle` command on the registry and the servers does: serve, rollback, rollout, ui and the tracking
server."""

from __future__ import annotations

import sys
from pathlib import Path

from pipelines.commands import load


def serve_command(args) -> int:
    import os

    import mlflow

    # The champion's download and the follower's: no progress bars in a server's output or log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    from components.deploy.generator_runtime import is_generator_bundle
    from components.deploy.openai_routes import ROUTES
    from components.deploy.request_limits import GenerationLimits
    from components.deploy.server import SERVER_PORTS, Follow, Limits, check_ports_free, serve
    from components.handoff import model_uri
    from components.pii import HASH, LogPii, log_hash_key
    from components.registry import CHAMPION, resolve_bundle
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
    rollouts = " and its rollouts" if alias == CHAMPION else ""
    following = f"; follows @{alias}{rollouts} (every {cfg.serve.follow_seconds:g} s)" if follow else ""
    metrics_port = port + SERVER_PORTS["metrics"]
    routes = (
        f"{', '.join(ROUTES)} (OpenAI's API), POST /v2/models/{name}/generate and /generate_stream"
        if is_generator_bundle(bundle)
        else f"POST /v2/models/{name}/infer, POST /predict"
    )
    args.console.show(
        f"serving {served} (version {version}{following}) on http://{cfg.serve.host}:{port}: {routes}; metrics "
        f"on :{metrics_port}/metrics; predictions logged to {log} (personal data: {cfg.serve.log_pii})"
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
        GenerationLimits(cfg.serve.max_prompt_tokens, cfg.serve.max_tokens, cfg.serve.max_waiting),
    )
    return 0


def rollback_command(args) -> int:
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


def rollout_command(args) -> int:
    import mlflow

    from components.decision import Decision
    from components.registry import RegistryError
    from monitoring.rollout import PROMOTE, ROLLBACK, check_rollout
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
    args.console.show(check.report(cfg.tracking.registered_model, decided=args.action != "status"))
    return 0


def ui_command(args) -> int:
    from components.tracking import is_tracking_server, ui_link, use_config_experiment
    from pipelines.local import tracking_uri_for
    from pipelines.process_groups import run_until_stopped

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


def tracking_server_command(args) -> int:
    from pipelines.tracking_server import run_tracking_server

    run_tracking_server(args.dir, args.port, args.artifacts)
    return 0
