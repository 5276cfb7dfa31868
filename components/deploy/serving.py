"""Serving the champion with MLServer (the server KServe runs): the Open Inference Protocol (KServe V2) on
`/v2/...`, plus `POST /predict` with plain JSON for people. onnxruntime infers; tokenization happens here.
Prometheus metrics on the HTTP port + 2 (MLServer's 8080/8081/8082 layout): MLServer's request counts and
latencies, and the texts classified per model version and label."""

from __future__ import annotations

import functools
import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.errors import MLServerError
from mlserver.handlers import custom_handler
from mlserver.types import InferenceRequest, InferenceResponse
from pydantic import BaseModel

from components import pii
from components.errors import LifecycleError
from components.handoff import BUNDLE, BUNDLE_MODEL, version_uri

INPUT_NAME = "text"
log = logging.getLogger(__name__)


class BadRequest(MLServerError):
    """Answered with 400 and the message; the server goes on serving."""

    def __init__(self, message: str):
        super().__init__(message, status_code=400)


@dataclass(frozen=True)
class Limits:
    max_batch: int = 64
    max_text_chars: int = 2000
    max_request_bytes: int = 1 << 20  # a request's body; larger ones get 413 before they are read whole


class BodyLimit:
    """ASGI middleware: the request body, whole, before the app sees it. 413 for one over `max_bytes`, told by its
    Content-Length or found while it streams in; a gzip body (Content-Encoding: gzip) counts inflated, and
    inflating stops at the limit. A body that never completes (the client gave up) reaches no app: nothing is
    classified or logged for it."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        import zlib

        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await _refuse(send, 413, f"request body over {self.max_bytes} bytes (serve.max_request_bytes)")
        encoding = headers.get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
        if encoding not in ("identity", "gzip"):
            return await _refuse(send, 415, f"Content-Encoding {encoding!r}: send the body as is or gzip")
        inflater = zlib.decompressobj(wbits=31) if encoding == "gzip" else None  # 31: a gzip header and trailer
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            try:  # never more than one byte past the limit inflated
                body += inflater.decompress(chunk, self.max_bytes + 1 - len(body)) if inflater else chunk
            except zlib.error as err:
                return await _refuse(send, 400, f"the gzip body cannot be inflated: {err}")
            if len(body) > self.max_bytes:
                inflated = " inflated" if inflater else ""
                return await _refuse(
                    send, 413, f"request body over {self.max_bytes} bytes{inflated} (serve.max_request_bytes)"
                )
            more = message.get("more_body", False)
        if inflater and not inflater.eof:
            return await _refuse(send, 400, "the gzip body ends before its gzip stream does")
        if inflater:  # the app gets the inflated body, as if it had been sent so
            scope = dict(
                scope,
                headers=[(k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")]
                + [(b"content-length", str(len(body)).encode())],
            )

        async def replay():
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send)


async def _refuse(send, status: int, error: str) -> None:
    import json

    content = json.dumps({"error": error}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": content})


class TextsRequest(BaseModel):
    texts: list[str]


def texts_from_request(request: InferenceRequest, limits: Limits) -> list[str]:
    """The texts of a V2 request: one BYTES input of shape [n] or [n, 1]; every problem is a BadRequest."""
    if len(request.inputs) != 1:
        raise BadRequest(f"expected exactly one input named '{INPUT_NAME}', got {len(request.inputs)}")
    tensor = request.inputs[0]
    if tensor.name != INPUT_NAME:
        raise BadRequest(f"input '{tensor.name}': expected the input named '{INPUT_NAME}' (the model's metadata)")
    if tensor.datatype != "BYTES":
        raise BadRequest(f"input '{tensor.name}': datatype must be BYTES (texts), got {tensor.datatype}")
    if not tensor.shape or tensor.shape[0] < 1 or any(d != 1 for d in tensor.shape[1:]):
        raise BadRequest(f"input '{tensor.name}': shape must be [n] or [n, 1] with n >= 1, got {tensor.shape}")
    try:
        texts = StringCodec.decode_input(tensor)
    except Exception as err:  # the codec's own errors are many kinds of malformed data
        raise BadRequest(f"input '{tensor.name}': cannot decode texts: {err}") from None
    if len(texts) != tensor.shape[0]:
        raise BadRequest(f"input '{tensor.name}': shape says {tensor.shape[0]} texts, data holds {len(texts)}")
    return check_texts(texts, limits)


def check_texts(texts: list, limits: Limits) -> list[str]:
    if not texts:
        raise BadRequest("no texts: send at least one")
    if len(texts) > limits.max_batch:
        raise BadRequest(f"{len(texts)} texts in one request; at most {limits.max_batch}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise BadRequest(f"text {i}: expected a string, got {type(text).__name__}")
        if not text.strip():
            raise BadRequest(f"text {i} is empty")
        if len(text) > limits.max_text_chars:
            raise BadRequest(f"text {i} has {len(text)} characters; at most {limits.max_text_chars}")
    return texts


class TextClassifierRuntime(MLModel):
    """parameters.uri: an ONNX bundle directory; parameters.extra: version (the bundle's), follow (a Follow as a
    dict, or none), prediction_log (a storage URI), log_flush_texts, log_flush_seconds, max_batch, max_text_chars.

    Each request reads `served` once: a swap (components.deploy.following) never changes a request mid-way."""

    async def load(self) -> bool:
        from concurrent.futures import ThreadPoolExecutor

        from components.deploy.following import Follower, Loaded, Served
        from components.deploy.onnx_classifier import OnnxClassifier
        from monitoring.prediction_log import PredictionLog

        extra = self.settings.parameters.extra or {}
        self.served = Served(Loaded(extra["version"], OnnxClassifier(self.settings.parameters.uri, spinning=False)))
        self.limits = Limits(extra.get("max_batch", 64), extra.get("max_text_chars", 2000))
        self.log = (
            PredictionLog(
                extra["prediction_log"],
                extra.get("log_flush_texts", 100),
                extra.get("log_flush_seconds", 30.0),
                text_form=pii.LogPii(**extra.get("log_pii", {})).text_form(),
            )
            if extra.get("prediction_log")
            else None
        )
        self.shadow_pool = ThreadPoolExecutor(1, thread_name_prefix="shadow", initializer=_yield_to_answers)
        self.shadow_room = threading.BoundedSemaphore(MAX_SHADOW_WAITING)
        self.follower = None
        if extra.get("follow"):
            follow = Follow(**extra["follow"])
            self.follower = Follower(
                self.name,
                follow.alias,
                follow.seconds,
                follow.download_dir,
                functools.partial(load_version, self.name),
                self.served,
                self._swap,
            )
            self.follower.start()
        return True

    def _swap(self, served) -> None:
        self.served = served

    async def unload(self) -> bool:
        if self.follower:
            self.follower.stop()
        self.shadow_pool.shutdown(wait=True)  # the shadow scores under way reach the log
        if self.log:
            self.log.close()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        texts = texts_from_request(payload, self.limits)
        version, labels, probabilities, _ = self._classify(texts)
        return InferenceResponse(
            model_name=self.name,
            model_version=version,
            id=payload.id,
            outputs=[
                StringCodec.encode_output("label", labels),
                NumpyCodec.encode_output("probabilities", probabilities.astype(np.float32)),
            ],
        )

    @custom_handler(rest_path="/predict")
    async def predict_json(self, request: TextsRequest) -> dict:
        """{"texts": [...]} -> {"predictions": [{"label": ..., "probabilities": {...}}], "model_version": ...}"""
        texts = check_texts(request.texts, self.limits)
        version, labels, _, by_label = self._classify(texts)
        return {
            "model": self.name,
            "model_version": version,
            "predictions": [
                {"label": label, "probabilities": probabilities} for label, probabilities in zip(labels, by_label)
            ],
        }

    def _classify(self, texts: list[str]) -> tuple[str, list[str], np.ndarray, list[dict[str, float]]]:
        """(the version that answered, labels, the probability matrix, the same as {label: probability} per text).
        The request's texts are its key for a canary's stable share; a canary that fails is answered by the
        champion. The second opinion of a rollout is scored on another thread, after the answer."""
        from monitoring.prediction_log import ANSWER

        served = self.served
        answering, second = served.route("\n".join(texts))
        try:
            scored = self._score(answering, texts, ANSWER)
        except Exception:
            if answering is served.champion:
                raise
            answering, second = served.champion, None
            scored = self._score(answering, texts, ANSWER)
        if second:
            self._score_aside(second, texts)
        return (answering.version, *scored)

    def _score(self, model, texts: list[str], role: str) -> tuple[list[str], np.ndarray, list[dict[str, float]]]:
        """One version's scores of the texts, timed, counted and logged; a failure is logged and counted too."""
        import time

        from components.deploy.onnx_classifier import label_probabilities

        classified, seconds, failures = serving_metrics()
        start = time.perf_counter()
        try:
            probabilities = model.classifier.probabilities(texts)
        except Exception as err:
            failures.labels(self.name, model.version, role).inc()
            if self.log:
                self.log.write(
                    texts,
                    [None] * len(texts),
                    [None] * len(texts),
                    self.name,
                    model.version,
                    role,
                    error=f"{type(err).__name__}: {err}"[:500],
                )
            log.exception("version %s (%s) failed on %d texts", model.version, role, len(texts))
            raise
        elapsed = time.perf_counter() - start
        seconds.labels(self.name, model.version, role).observe(elapsed)
        labels = [model.classifier.labels[int(i)] for i in probabilities.argmax(axis=1)]
        by_label = label_probabilities(model.classifier.labels, probabilities)
        if self.log:
            self.log.write(texts, labels, by_label, self.name, model.version, role, 1000 * elapsed)
        for label in set(labels):
            classified.labels(self.name, model.version, role, label).inc(labels.count(label))
        return labels, probabilities, by_label

    def _score_aside(self, model, texts: list[str]) -> None:
        """Score off the answer path; when the shadow thread falls behind, the copy is dropped and counted rather
        than queued without end."""
        from monitoring.prediction_log import SHADOW

        if not self.shadow_room.acquire(blocking=False):
            shadow_dropped().labels(self.name, model.version).inc(len(texts))
            return

        def score() -> None:
            try:
                self._score(model, texts, SHADOW)
            except Exception:
                pass  # logged and counted by _score; the client has its answer
            finally:
                self.shadow_room.release()

        self.shadow_pool.submit(score)


MAX_SHADOW_WAITING = 32  # requests waiting for their shadow scoring


def _yield_to_answers() -> None:
    """The shadow thread at the lowest CPU priority (Linux sets it per thread): on a busy replica the answers get
    the cores and the shadow falls behind and drops copies, rather than slowing the champion."""
    import os
    import sys

    if sys.platform == "linux":
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


@dataclass(frozen=True)
class Follow:
    """What a server of models:/NAME@ALIAS follows: the alias, how often it reads the registry, where versions are
    downloaded."""

    alias: str
    seconds: float
    download_dir: str


def load_version(name: str, version: str, download_dir):
    """A registered ONNX version, downloaded and loaded, as the follower swaps it in."""
    from components.deploy.following import Loaded
    from components.deploy.onnx_classifier import OnnxClassifier
    from components.handoff import version_uri

    bundle, _, _ = resolve_bundle(version_uri(name, version), download_dir)
    return Loaded(version, OnnxClassifier(bundle, spinning=False), Path(bundle).parents[1])


def resolve_bundle(model_uri: str, download_dir: str | Path) -> tuple[str, str, str]:
    """Download a registered ONNX model (models:/NAME@ALIAS or models:/NAME/VERSION): (bundle dir, name, version)."""
    import mlflow

    from components.registry import RegistryError, alias_version

    client = mlflow.MlflowClient()
    reference = model_uri.removeprefix("models:/")
    name, _, version = reference.partition("/")
    if "@" in name:
        name, alias = name.split("@", 1)
        version = alias_version(client, name, alias)
        if version is None:
            raise RegistryError(
                f"{model_uri}: the registry at {mlflow.get_tracking_uri()} has no version of "
                f"{name!r} with the alias {alias!r} (`lifecycle run` makes a champion)"
            )
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=version_uri(name, version), dst_path=str(Path(download_dir) / f"{name}-{version}")
    )
    bundle = Path(local) / "artifacts" / BUNDLE  # the pyfunc's artifact "bundle"
    if not (bundle / BUNDLE_MODEL).is_file():
        raise LifecycleError(
            f"{model_uri} (version {version}) is not an ONNX bundle; serve a version that "
            f"stage 6 registered (alias champion)"
        )
    return str(bundle), name, version


@functools.cache
def serving_metrics():
    """Prometheus, per model, version and role (answer or shadow): texts classified by label, scoring latency,
    scorings that failed."""
    from prometheus_client import Counter, Histogram

    by_version = ["model_name", "model_version", "role"]
    return (
        Counter("lifecycle_texts_classified", "Texts classified, by the label given", [*by_version, "label"]),
        Histogram("lifecycle_scoring_seconds", "Time to score one request's texts", by_version),
        Counter("lifecycle_scoring_failures", "Requests a version failed to score", by_version),
    )


@functools.cache
def shadow_dropped():
    from prometheus_client import Counter

    return Counter(
        "lifecycle_shadow_dropped_texts",
        "Texts left unscored by the shadow, which fell behind",
        ["model_name", "model_version"],
    )


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
    log_pii: pii.LogPii = pii.LogPii(),
) -> None:
    """Run MLServer in this process on `host` until SIGINT/SIGTERM (the prediction log writes its last shard at
    exit). `log_flush`: (texts, seconds) after which waiting records are written as a shard. `follow`: the alias
    whose moves (and rollouts) the server follows; without it, `version` is served until the server stops.
    `log_pii`: what the log stores of each text's personal data (the answer is always scored on the text as sent)."""
    import asyncio
    import os
    from dataclasses import asdict

    from mlserver import MLServer
    from mlserver.settings import ModelParameters, ModelSettings, Settings
    from mlserver.types import MetadataTensor

    from components.handoff import read_labels

    class LimitedServer(MLServer):
        stopping, stopped_by = False, None  # stopped_by: the signal, if a signal stopped it

        def _create_servers(self):
            super()._create_servers()
            self._rest_server._app.add_middleware(BodyLimit, max_bytes=limits.max_request_bytes)

        async def stop(self, sig=None):
            # Once stopped, each of uvicorn's two servers raises the signal again, which would stop all again.
            if not self.stopping:
                self.stopping, self.stopped_by = True, sig
                await super().stop(sig)

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
    classes = len(read_labels(bundle_dir))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the follower's downloads: not a log's
    # No version in MLServer's settings: the served version changes without a restart; each answer names its own.
    model = ModelSettings(
        name=name,
        implementation=TextClassifierRuntime,
        platform="onnxruntime",
        inputs=[MetadataTensor(name=INPUT_NAME, datatype="BYTES", shape=[-1])],
        outputs=[
            MetadataTensor(name="label", datatype="BYTES", shape=[-1, 1]),
            MetadataTensor(name="probabilities", datatype="FP32", shape=[-1, classes]),
        ],
        parameters=ModelParameters(
            uri=bundle_dir,
            extra={
                "version": version,
                "follow": asdict(follow) if follow else None,
                "prediction_log": prediction_log,
                "log_flush_texts": log_flush[0],
                "log_flush_seconds": log_flush[1],
                "log_pii": asdict(log_pii),
                "max_batch": limits.max_batch,
                "max_text_chars": limits.max_text_chars,
            },
        ),
    )

    async def run() -> LimitedServer:
        # Made inside the running loop: MLServer puts its SIGINT/SIGTERM handlers on the loop it finds.
        server = LimitedServer(settings)
        await server.start([model])
        return server

    for logger in SHUTDOWN_LINES:
        logging.getLogger(logger).addFilter(_without_shutdown_lines)
    stopped_by = asyncio.run(run()).stopped_by
    log.info("server of %s stopped%s", name, f" ({signal.Signals(stopped_by).name})" if stopped_by else "")


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
