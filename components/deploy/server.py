"""`lifecycle serve`: MLServer (the server KServe runs) in this process, serving a registered ONNX bundle with the
runtime of serving_runtime.py: the Open Inference Protocol (KServe V2) on `/v2/...`, `POST /predict` with plain
JSON for people, and Prometheus metrics on the HTTP port + 2 (MLServer's 8080/8081/8082 layout). A generator's
bundle is served by generator_runtime.py, with OpenAI's routes (openai_routes.py) on the HTTP port."""

from __future__ import annotations

import logging
import signal

from mlserver import MLServer

from components import pii
from components.deploy.generator_runtime import PROMPT_INPUT, TEXT_OUTPUT, TextGeneratorRuntime, is_generator_bundle
from components.deploy.request_limits import INPUT_NAME, BodyLimit, GenerationLimits, Limits
from components.deploy.serving_runtime import Follow, TextClassifierRuntime
from components.errors import LifecycleError

log = logging.getLogger(__name__)


# MLServer's three servers, at these offsets from the HTTP port (8080/8081/8082).
SERVER_PORTS = {"HTTP": 0, "gRPC": 1, "metrics": 2}


def check_ports_free(host: str, port: int) -> None:
    """Refuse, naming the port and which server needs it, when one of the three is taken: MLServer would
    otherwise start the HTTP server and die in a traceback when the next one cannot bind."""
    import socket

    last = 65535 - max(SERVER_PORTS.values())
    if not 1 <= port <= last:
        raise LifecycleError(f"--port {port}: expected 1 to {last} (MLServer uses the HTTP port and the two after it)")
    for server, offset in SERVER_PORTS.items():
        with socket.socket() as probe:
            # As uvicorn binds: a port left in TIME_WAIT by the last server is free to it, and so to this check.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port + offset))
            except OSError as e:
                raise LifecycleError(
                    f"port {port + offset} on {host} (the {server} server; MLServer uses the HTTP "
                    f"port and the two after it) cannot be used: {e.strerror}. Choose another "
                    "--port or serve.port"
                ) from None


class LimitedServer(MLServer):
    """MLServer with the request body's limit on its REST app, stopped once however many signals arrive;
    `openai_model`: the generator whose OpenAI routes the REST app also has."""

    stopping, stopped_by = False, None  # stopped_by: the signal, if a signal stopped it

    def __init__(self, settings, max_request_bytes: int, openai_model: str | None = None):
        # Before MLServer's own __init__, which creates the servers.
        self.max_request_bytes, self.openai_model = max_request_bytes, openai_model
        super().__init__(settings)

    def _create_servers(self):
        from components.deploy.openai_routes import openai_router

        super()._create_servers()
        if self.openai_model:  # routes on the app, not a custom handler: MLServer's handlers cannot stream
            self._rest_server._app.include_router(openai_router(self._model_registry, self.openai_model))
        self._rest_server._app.add_middleware(BodyLimit, max_bytes=self.max_request_bytes)

    async def stop(self, sig=None):
        # Once stopped, each of uvicorn's two servers raises the signal again, which would stop all again.
        if not self.stopping:
            self.stopping, self.stopped_by = True, sig
            await super().stop(sig)


def serve(
    bundle_dir: str,
    name: str,
    version: str,
    port: int,
    prediction_log: str,
    limits: Limits,
    log_flush: tuple[int, float] = (100, 30.0),
    host: str = "127.0.0.1",
    follow: Follow | None = None,
    log_pii: pii.LogPii | None = None,
    generation: GenerationLimits | None = None,
) -> None:
    """Run MLServer in this process on `host` until SIGINT/SIGTERM (the prediction log writes its last shard at
    exit). `log_flush`: (texts, seconds) after which waiting records are written as a shard. `follow`: the alias
    whose moves (and rollouts) the server follows; without it, `version` is served until the server stops.
    `log_pii`: what the log stores of each text's personal data (the answer is always scored on the text as sent;
    by default the log redacts it). `generation`: the limits of a generator's requests, when the bundle is one."""
    import asyncio
    from dataclasses import asdict

    from mlserver.settings import Settings

    settings = Settings(
        http_port=port + SERVER_PORTS["HTTP"],
        grpc_port=port + SERVER_PORTS["gRPC"],
        metrics_port=port + SERVER_PORTS["metrics"],
        metrics_endpoint="/metrics",
        parallel_workers=0,
        debug=False,
        host=host,
        grpc_max_message_length=limits.max_request_bytes,
    )
    runtime = {
        "version": version,
        "follow": asdict(follow) if follow else None,
        "prediction_log": prediction_log,
        "log_flush_texts": log_flush[0],
        "log_flush_seconds": log_flush[1],
        "log_pii": asdict(log_pii or pii.LogPii()),
        "max_batch": limits.max_batch,
        "max_text_chars": limits.max_text_chars,
    }
    generator = is_generator_bundle(bundle_dir)
    if generator:
        runtime["generation"] = asdict(generation or GenerationLimits())
    model = (_generator_settings if generator else _model_settings)(bundle_dir, name, runtime)

    async def run() -> LimitedServer:
        # Made inside the running loop: MLServer puts its SIGINT/SIGTERM handlers on the loop it finds.
        server = LimitedServer(settings, limits.max_request_bytes, name if generator else None)
        await server.start([model])
        return server

    for logger in SHUTDOWN_LINES:
        logging.getLogger(logger).addFilter(_without_shutdown_lines)
    stopped_by = asyncio.run(run()).stopped_by
    log.info("server of %s stopped%s", name, f" ({signal.Signals(stopped_by).name})" if stopped_by else "")


def _model_settings(bundle_dir: str, name: str, runtime: dict):
    """The model as MLServer loads it: the runtime's class and its parameters (`runtime`), the V2 metadata."""
    from mlserver.settings import ModelParameters, ModelSettings
    from mlserver.types import MetadataTensor

    from components.handoff import read_labels

    classes = len(read_labels(bundle_dir))
    # No version in MLServer's settings: the served version changes without a restart; each answer names its own.
    return ModelSettings(
        name=name,
        implementation=TextClassifierRuntime,
        platform="onnxruntime",
        inputs=[MetadataTensor(name=INPUT_NAME, datatype="BYTES", shape=[-1])],
        outputs=[
            MetadataTensor(name="label", datatype="BYTES", shape=[-1, 1]),
            MetadataTensor(name="probabilities", datatype="FP32", shape=[-1, classes]),
        ],
        parameters=ModelParameters(uri=bundle_dir, extra=runtime),
    )


def _generator_settings(bundle_dir: str, name: str, runtime: dict):
    """A generator as MLServer loads it: one prompt in, its response out (the generate endpoints)."""
    from mlserver.settings import ModelParameters, ModelSettings
    from mlserver.types import MetadataTensor

    return ModelSettings(
        name=name,
        implementation=TextGeneratorRuntime,
        platform="onnxruntime-genai",
        inputs=[MetadataTensor(name=PROMPT_INPUT, datatype="BYTES", shape=[1])],
        outputs=[MetadataTensor(name=TEXT_OUTPUT, datatype="BYTES", shape=[1])],
        parameters=ModelParameters(uri=bundle_dir, extra=runtime),
    )


# What MLServer's HTTP, gRPC and metrics servers each say as they stop; `serve` says it once.
SHUTDOWN_LINES = {
    "uvicorn.error": (
        "Shutting down",
        "Waiting for application shutdown",
        "Application shutdown complete",
        "Finished server process",
    ),
    "mlserver.grpc": ("Waiting for gRPC server shutdown", "gRPC server shutdown complete"),
}


def _without_shutdown_lines(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(SHUTDOWN_LINES.get(record.name, ()))
