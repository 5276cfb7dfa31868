"""The MLServer runtime that serves a classifier's ONNX bundle: the Open Inference Protocol's infer and `POST
/predict` for people, onnxruntime scoring, a rollout's candidate routed or shadowed, every scoring logged to the
prediction log and counted in Prometheus metrics, and the registry followed (components/deploy/registry_follower.py)."""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.handlers import custom_handler
from mlserver.types import InferenceRequest, InferenceResponse

from components import pii
from components.deploy.request_limits import Limits, TextsRequest, check_texts, texts_from_request

log = logging.getLogger(__name__)


class TextClassifierRuntime(MLModel):
    """parameters.uri: an ONNX bundle directory; parameters.extra: version (the bundle's), follow (a Follow as a
    dict, or none), prediction_log (a storage URI), log_flush_texts, log_flush_seconds, max_batch, max_text_chars.

    Each request reads `served` once: a swap (components.deploy.registry_follower) never changes a request mid-way."""

    async def load(self) -> bool:
        from concurrent.futures import ThreadPoolExecutor

        from components.deploy.onnx_classifier import OnnxClassifier
        from components.deploy.registry_follower import Loaded, Served

        extra = self.settings.parameters.extra or {}
        self.served = Served(Loaded(extra["version"], OnnxClassifier(self.settings.parameters.uri, spinning=False)))
        self.limits = Limits(extra.get("max_batch", 64), extra.get("max_text_chars", 2000))
        self.log = open_prediction_log(extra)
        self.shadow_pool = ThreadPoolExecutor(1, thread_name_prefix="shadow", initializer=_yield_to_answers)
        self.shadow_room = threading.BoundedSemaphore(MAX_SHADOW_WAITING)
        self.follower = follow_registry(self, extra, load_version)
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
            probabilities = model.model.probabilities(texts)
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
        labels = [model.model.labels[int(i)] for i in probabilities.argmax(axis=1)]
        by_label = label_probabilities(model.model.labels, probabilities)
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


def open_prediction_log(extra: dict):
    """The runtime's prediction log (parameters.extra's prediction_log, log_flush_*, log_pii), or None."""
    from monitoring.prediction_log import PredictionLog

    if not extra.get("prediction_log"):
        return None
    return PredictionLog(
        extra["prediction_log"],
        extra.get("log_flush_texts", 100),
        extra.get("log_flush_seconds", 30.0),
        text_form=pii.LogPii(**extra.get("log_pii", {})).text_form(),
    )


def follow_registry(runtime, extra: dict, load, warm=None, discard=None):
    """The started Follower of `runtime` (its name, `served` and `_swap`) when parameters.extra names an alias to
    follow, else None. `load(name, version, download_dir)` loads a version; `warm` its first call; `discard` lets go
    of one loaded for a swap that failed."""
    from components.deploy.registry_follower import Follower, warm_classifier

    if not extra.get("follow"):
        return None
    follow = Follow(**extra["follow"])
    follower = Follower(
        runtime.name,
        follow.alias,
        follow.seconds,
        follow.download_dir,
        functools.partial(load, runtime.name),
        runtime.served,
        runtime._swap,
        warm or warm_classifier,
        *([discard] if discard else []),
    )
    follower.start()
    return follower


@dataclass(frozen=True)
class Follow:
    """What a server of models:/NAME@ALIAS follows: the alias, how often it reads the registry, where versions are
    downloaded."""

    alias: str
    seconds: float
    download_dir: str


def load_version(name: str, version: str, download_dir):
    """A registered ONNX version, downloaded and loaded, as the follower swaps it in."""
    from components.deploy.onnx_classifier import OnnxClassifier
    from components.deploy.registry_follower import Loaded
    from components.handoff import version_uri
    from components.registry import resolve_bundle

    bundle, _, _ = resolve_bundle(version_uri(name, version), download_dir)
    return Loaded(version, OnnxClassifier(bundle, spinning=False), Path(bundle).parents[1])


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
