"""The MLServer runtime that serves a generator's bundle (components/deploy/onnx_generator.py): responses generated
for the OpenAI routes (components/deploy/openai_routes.py) and the Open Inference Protocol's generate endpoints, each
logged to the prediction log and counted in Prometheus metrics when it ends; a rollout's canary routed; the registry
followed as for a classifier, a replaced version's generator closed only once its last response has ended."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from mlserver import MLModel
from mlserver.codecs import StringCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, Parameters

from components.deploy.onnx_generator import Completion, GeneratorBusy, Sampling
from components.deploy.request_limits import (
    BadRequest,
    GenerationLimits,
    PromptTooLong,
    SamplingRequest,
    TooBusy,
    parse,
)
from components.deploy.serving_runtime import follow_registry, open_prediction_log

log = logging.getLogger(__name__)
GENERATOR_FILE = "genai_config.json"  # in a generator's bundle (onnxruntime-genai's model builder writes it)
PROMPT_INPUT, TEXT_OUTPUT = "prompt", "text"  # the generate endpoints' tensors


def is_generator_bundle(bundle_dir: str | Path) -> bool:
    return (Path(bundle_dir) / GENERATOR_FILE).is_file()


class SharedGenerator:
    """An OnnxGenerator and the responses using it: one that a swap retired is closed once its last response ended,
    never while one streams."""

    def __init__(self, generator):
        self.generator = generator
        self.users, self.retired, self.closed = 0, False, False
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        """One more response on it; False once it is closed (the caller reads the served versions again)."""
        with self._lock:
            if not self.closed:
                self.users += 1
            return not self.closed

    def release(self) -> None:
        with self._lock:
            self.users -= 1
        self._close_if_done()

    def retire(self) -> None:
        with self._lock:
            self.retired = True
        self._close_if_done()

    def _close_if_done(self) -> None:
        with self._lock:
            closing = self.retired and not self.users and not self.closed
            self.closed = self.closed or closing
        if closing:  # its engine thread ends within one poll; not on the event loop's time
            threading.Thread(target=self.generator.close, name="generator-close", daemon=True).start()


def warm_generator(shared: SharedGenerator) -> None:
    from components.deploy.registry_follower import WARM_TEXT

    shared.generator.complete([[{"role": "user", "content": WARM_TEXT}]], Sampling(max_tokens=1))


def load_generator(max_waiting: int, name: str, version: str, download_dir):
    """A registered generator's version, downloaded and loaded, as the follower swaps it in."""
    from components.deploy.onnx_generator import OnnxGenerator
    from components.deploy.registry_follower import Loaded
    from components.handoff import version_uri
    from components.registry import resolve_bundle

    bundle, _, _ = resolve_bundle(version_uri(name, version), download_dir)
    return Loaded(version, SharedGenerator(OnnxGenerator(bundle, max_waiting)), Path(bundle).parents[1])


class Generation:
    """One response under way on one version: its pieces of text as they come, then its Completion. It is logged
    and counted when it ends, whether its client read it all, went away (cancelled) or it failed."""

    def __init__(self, runtime: TextGeneratorRuntime, loaded, prompt: str, response_id: str):
        self.runtime, self.loaded, self.prompt, self.response_id = runtime, loaded, prompt, response_id
        self.version = loaded.version
        self.items: asyncio.Queue = asyncio.Queue()
        self.request, self.done, self.first = None, None, None
        self.started, self.first_at = time.perf_counter(), None

    def submit(self, ids: list[int], sampling: Sampling) -> None:
        loop = asyncio.get_running_loop()
        try:  # the engine's thread delivers; the event loop takes each item in turn
            self.request = self.loaded.model.generator.submit(
                ids, sampling, lambda item: loop.call_soon_threadsafe(self._arrive, item)
            )
        except GeneratorBusy as err:
            self.loaded.model.release()
            raise TooBusy(str(err)) from None
        except BaseException:
            self.loaded.model.release()
            raise

    def _arrive(self, item: str | Completion) -> None:
        self.items.put_nowait(item)
        if not isinstance(item, Completion):
            self.first_at = self.first_at or time.perf_counter()
            return
        self.done = item
        self.loaded.model.release()
        # Off the event loop: finding personal data in a whole response would stall every other stream.
        asyncio.get_running_loop().run_in_executor(None, self._record, item)

    def _record(self, item: Completion) -> None:
        try:
            self.runtime.record(self, item)
        except Exception:  # the client has its response whatever befalls its record
            log.exception("response %s could not be recorded", self.response_id)

    async def begin(self) -> str | Completion:
        """The first item, awaited before a response starts: a version that fails at once fails before any byte."""
        try:
            self.first = await self.items.get()
        except BaseException:
            self.cancel()
            raise
        return self.first

    async def pieces(self) -> AsyncIterator[str | Completion]:
        """The text as it comes, then the Completion; a reader that stops early (its client went away) cancels."""
        try:
            item = self.first
            while True:
                yield item
                if isinstance(item, Completion):
                    return
                item = await self.items.get()
        finally:
            self.cancel()

    async def result(self) -> Completion:
        async for item in self.pieces():
            if isinstance(item, Completion):
                return item

    def cancel(self) -> None:
        if self.done is None and self.request is not None:
            self.request.cancel()


class TextGeneratorRuntime(MLModel):
    """parameters.uri: a generator's bundle; parameters.extra: version, follow, prediction_log, log_flush_texts,
    log_flush_seconds, log_pii (as for a classifier) and generation (GenerationLimits as a dict).

    Each response reads `served` once and finishes on the version that started it, across swaps."""

    async def load(self) -> bool:
        from components.deploy.onnx_generator import OnnxGenerator
        from components.deploy.registry_follower import Loaded, Served

        extra = self.settings.parameters.extra or {}
        self.limits = GenerationLimits(**extra.get("generation", {}))
        generator = OnnxGenerator(self.settings.parameters.uri, self.limits.max_waiting)
        self.served = Served(Loaded(extra["version"], SharedGenerator(generator)))
        self.log = open_prediction_log(extra)
        load = functools.partial(load_generator, self.limits.max_waiting)
        self.follower = follow_registry(self, extra, load, warm_generator, SharedGenerator.retire)
        return True

    def _swap(self, served) -> None:
        old, self.served = self.served, served
        kept = [m for m in (served.champion, served.candidate) if m]
        for gone in (m for m in (old.champion, old.candidate) if m and not any(m is k for k in kept)):
            gone.model.retire()

    async def unload(self) -> bool:
        if self.follower:
            self.follower.stop()
        for loaded in (self.served.champion, self.served.candidate):
            if loaded:
                loaded.model.retire()
        if self.log:
            self.log.close()
        return True

    async def generate(self, messages: list[dict], sampling: Sampling, response_id: str) -> Generation:
        """A response under way, its first item come. The prompt is the canary's key; a canary that fails is
        answered by the champion. BadRequest (the prompt), TooBusy (429) or MLServerError (500) otherwise."""
        prompt = "\n\n".join(m["content"] for m in messages if m["role"] == "user")
        served, answering = self._lease(prompt)
        try:
            return await self._begin(answering, messages, sampling, prompt, response_id)
        except BadRequest:
            raise
        except Exception as err:
            if answering is served.champion:
                raise
            log.warning("candidate version %s failed (%s); the champion answers", answering.version, err)
        _, champion = self._lease(prompt, champion=True)
        return await self._begin(champion, messages, sampling, prompt, response_id)

    def _lease(self, key: str, champion: bool = False):
        """(the served versions, the one that answers, acquired): read again if a swap closed it meanwhile."""
        while True:
            served = self.served
            answering = served.champion if champion else served.route(key)[0]
            if answering.model.acquire():
                return served, answering
            if self.served is served:  # closed and not swapped: the model is being unloaded
                raise MLServerError(f"{self.name} is stopping", status_code=503)

    async def _begin(self, loaded, messages, sampling, prompt, response_id) -> Generation:
        generation = Generation(self, loaded, prompt, response_id)
        try:
            ids = loaded.model.generator.prompt_ids(messages)
            if len(ids) > self.limits.max_prompt_tokens:
                raise PromptTooLong(
                    f"the prompt has {len(ids)} tokens; at most {self.limits.max_prompt_tokens} "
                    "(serve.max_prompt_tokens)",
                    "messages",
                )
        except BaseException:
            loaded.model.release()
            raise
        generation.submit(ids, sampling)
        first = await generation.begin()
        if isinstance(first, Completion) and first.finish_reason == "error" and not first.completion_tokens:
            raise MLServerError(f"version {loaded.version} failed to generate", status_code=500)
        return generation

    def record(self, generation: Generation, done: Completion) -> None:
        """A response that ended: its metrics, and its record in the prediction log."""
        ttft, rate, prompt_tokens, completion_tokens, finished, failures = generation_metrics()
        labels = (self.name, generation.version)
        seconds = time.perf_counter() - generation.started
        first = generation.first_at - generation.started if generation.first_at else None
        if first is not None:
            ttft.labels(*labels).observe(first)
        if done.completion_tokens:
            rate.labels(*labels).observe(done.completion_tokens / seconds)
        prompt_tokens.labels(*labels).inc(done.prompt_tokens)
        completion_tokens.labels(*labels).inc(done.completion_tokens)
        finished.labels(*labels, done.finish_reason).inc()
        if done.finish_reason == "error":
            failures.labels(*labels).inc()
        if self.log:
            self.log.write_generation(
                generation.prompt,
                None if done.finish_reason == "error" else done.text,
                self.name,
                generation.version,
                response_id=generation.response_id,
                prompt_tokens=done.prompt_tokens,
                completion_tokens=done.completion_tokens,
                finish_reason=done.finish_reason,
                latency_ms=1000 * seconds,
                ttft_ms=None if first is None else 1000 * first,
                error="the generator failed" if done.finish_reason == "error" else None,
            )

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """The Open Inference Protocol's generate: one prompt (a user message), the whole response."""
        generation = await self._generate_v2(payload)
        done = await generation.result()
        return self._v2_response(payload, generation, done.text, done)

    async def predict_stream(self, payloads: AsyncIterator[InferenceRequest]) -> AsyncIterator[InferenceResponse]:
        """generate_stream: one response per piece of text; the last, with no text, says how the response ended."""
        payload = await payloads.__anext__()
        generation = await self._generate_v2(payload)
        async for item in generation.pieces():
            done = item if isinstance(item, Completion) else None
            yield self._v2_response(payload, generation, "" if done else item, done)

    async def _generate_v2(self, payload: InferenceRequest) -> Generation:
        prompts = [t for t in payload.inputs if t.name == PROMPT_INPUT]
        if len(payload.inputs) != 1 or not prompts:
            raise BadRequest(f"expected exactly one input named '{PROMPT_INPUT}' (one string)")
        try:
            (prompt,) = StringCodec.decode_input(prompts[0])
        except Exception:  # not one string: many kinds of malformed data
            raise BadRequest(f"input '{PROMPT_INPUT}': expected one string") from None
        asked = parse(SamplingRequest, payload.parameters.model_dump() if payload.parameters else {})
        messages = [{"role": "user", "content": prompt}]
        return await self.generate(messages, asked.sampling(self.limits), payload.id or uuid.uuid4().hex)

    def _v2_response(self, payload, generation: Generation, text: str, done: Completion | None) -> InferenceResponse:
        ended = (
            {
                "finish_reason": done.finish_reason,
                "prompt_tokens": done.prompt_tokens,
                "completion_tokens": done.completion_tokens,
            }
            if done
            else {}
        )
        return InferenceResponse(
            model_name=self.name,
            model_version=generation.version,
            id=payload.id,
            outputs=[StringCodec.encode_output(TEXT_OUTPUT, [text])],
            parameters=Parameters(response_id=generation.response_id, **ended),
        )


@functools.cache
def generation_metrics():
    """Prometheus, per model and version: time to first token, tokens per second of each response, prompt and
    completion tokens, responses by finish reason, responses that failed."""
    from prometheus_client import Counter, Histogram

    by_version = ["model_name", "model_version"]
    return (
        Histogram("lifecycle_time_to_first_token_seconds", "From the request to its first text", by_version),
        Histogram(
            "lifecycle_tokens_per_second",
            "A response's completion tokens over its time from the request to its end",
            by_version,
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
        ),
        Counter("lifecycle_prompt_tokens", "Tokens of the prompts answered", by_version),
        Counter("lifecycle_completion_tokens", "Tokens generated", by_version),
        Counter("lifecycle_responses", "Responses ended, by finish reason", [*by_version, "finish_reason"]),
        Counter("lifecycle_generation_failures", "Responses a version failed to generate", by_version),
    )
