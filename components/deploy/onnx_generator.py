"""Prompts in, responses out, through onnxruntime-genai: what a generator's bundle runs (stage 6's checks, the
registered pyfunc, the server).

A bundle is the model builder's folder (model.onnx, its weights, genai_config.json), the fine-tuned model's tokenizer
files and `prompt_format.json` (the generation section's rendering keys): prompts are rendered exactly as training
rendered them. One og.Engine per loaded bundle, driven by one thread, batches the requests under way, hands each
request its text as it is decoded, and ends a request that reached a stop string or whose client went away. On the
CPU the engine batches statically (onnxruntime-genai 0.18: up to 4 requests start together and run until the last
ends; a request that arrives meanwhile waits); continuous batching needs its paged attention, built for CUDA only.
A request that samples with a seed runs on an og.Generator of its own in the same thread: the CPU engine has no
per-request seed.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PROMPT_FORMAT = "prompt_format.json"  # in the bundle: how prompts are rendered (components/evaluate/generative_adapter)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # the response ends before the first of these; none of it is returned
    seed: int | None = None


@dataclass
class Completion:
    text: str
    finish_reason: str  # stop (end of sequence or a stop string), length, cancelled or error
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int] = field(default_factory=list)


class GeneratorBusy(Exception):
    """More requests wait than the generator takes (serve.max_waiting): the server answers 429."""


class GeneratorClosed(RuntimeError):
    """The generator was closed, or its engine failed: it takes no more requests."""


class Request:
    """One prompt under way. The engine's thread calls `deliver` with each new piece of text, then once with the
    Completion; `cancel` (any thread) ends it at the next token."""

    def __init__(self, ids: list[int], sampling: Sampling, deliver: Callable[[str | Completion], None]):
        self.ids, self.sampling, self.deliver = ids, sampling, deliver
        self.tokens: list[int] = []
        self.text, self.sent, self.stopped_at = "", 0, None
        self.cancelled, self.cancel_sent = threading.Event(), False  # asked for; passed to the engine

    def cancel(self) -> None:
        self.cancelled.set()

    def add(self, piece: str) -> bool:
        """Take a decoded piece; deliver what can no longer turn into a stop string. True when a stop string was
        reached (the text ends before it)."""
        self.text += piece
        stops = self.sampling.stop
        found = [i for i in (self.text.find(s, max(0, self.sent - len(s))) for s in stops) if i >= 0]
        if found:
            self.stopped_at = min(found)
            self.text = self.text[: self.stopped_at]
        held = 0 if found else max((_overlap(self.text, s) for s in stops), default=0)
        if len(self.text) - held > self.sent:
            self._send(self.text[self.sent : len(self.text) - held])
            self.sent = len(self.text) - held
        return bool(found)

    def finish(self, reason: str) -> Completion:
        if self.sent < len(self.text):  # what a stop string's prefix held back, when none followed
            self._send(self.text[self.sent :])
        done = Completion(self.text, reason, len(self.ids), len(self.tokens), self.tokens)
        self._send(done)
        return done

    def _send(self, item: str | Completion) -> None:
        """Deliver; a receiver that cannot take it any more (its event loop closed) ends the request, never the
        engine's thread."""
        try:
            self.deliver(item)
        except Exception:
            log.exception("a generation's receiver failed; the generation is cancelled")
            self.cancel()


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of `text` that begins `stop`."""
    return next((n for n in range(min(len(stop) - 1, len(text)), 0, -1) if text.endswith(stop[:n])), 0)


class BundlePrompts:
    """How a bundle renders a conversation (its tokenizer files and prompt_format.json), without loading its model."""

    def __init__(self, bundle_dir: str | Path):
        from transformers import AutoTokenizer

        from components.config.schema_generation import GenerationConfig

        self.tokenizer = AutoTokenizer.from_pretrained(bundle_dir)
        self.generation = GenerationConfig(**json.loads((Path(bundle_dir) / PROMPT_FORMAT).read_text()))

    def ids(self, messages: list[dict]) -> list[int]:
        """A conversation's token ids, rendered as training rendered its examples (the system prompt of the config
        first, where the messages have none)."""
        from components.generation.encoding import render_prompt

        turns = [{"role": m["role"], "content": m["content"]} for m in messages]
        if self.generation.system_prompt and turns[0]["role"] != "system":
            turns.insert(0, {"role": "system", "content": self.generation.system_prompt})
        rendered = render_prompt(turns, self.tokenizer, self.generation)
        return self.tokenizer(rendered, add_special_tokens=False)["input_ids"]


class OnnxGenerator:
    def __init__(self, bundle_dir: str | Path, max_waiting: int = 16):
        import onnxruntime_genai as og

        self.bundle_dir = Path(bundle_dir)
        self.og, self.model = og, og.Model(str(self.bundle_dir))
        self.decoder = og.Tokenizer(self.model)
        self.prompts = BundlePrompts(self.bundle_dir)
        self.prompt_ids = self.prompts.ids
        self.max_waiting = max_waiting
        self.end_ids = set(self.decoder.eos_token_ids)
        self._incoming: queue.Queue[Request] = queue.Queue()
        self._active: dict[object, tuple[Request, int, object]] = {}  # og.Request -> (ours, turn, its decoder)
        self._alone: list[tuple[Request, object, object]] = []  # seeded sampling: (ours, og.Generator, decoder)
        self._count, self._lock = 0, threading.Lock()
        self._closing = threading.Event()
        self._ready, self._failed, self._broken = threading.Event(), None, ""
        self._thread = threading.Thread(target=self._run, name=f"generator-{self.bundle_dir.name}", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failed:
            raise self._failed

    def submit(self, ids: list[int], sampling: Sampling, deliver: Callable[[str | Completion], None]) -> Request:
        """Start generating; raises GeneratorBusy when the slots and the waiting room are full, GeneratorClosed once
        the generator was closed or its engine failed."""
        with self._lock:
            if self._closing.is_set() or self._broken:
                raise GeneratorClosed(self._broken or f"the generator of {self.bundle_dir} was closed")
            if self._count >= self.slots + self.max_waiting:
                raise GeneratorBusy(
                    f"{self._count} requests under way or waiting; at most {self.slots} + "
                    f"{self.max_waiting} (serve.max_waiting)"
                )
            self._count += 1
        request = Request(ids, sampling, deliver)
        self._incoming.put(request)
        return request

    def complete(self, prompts: list[list[dict]], sampling: Sampling) -> list[Completion]:
        """Each conversation's response, all through the engine at once (blocking); the caller waits its turn when
        more are given than the waiting room holds."""
        done: list[queue.Queue] = [queue.Queue() for _ in prompts]
        for box, messages in zip(done, prompts):
            ids = self.prompt_ids(messages)
            while True:
                try:
                    self.submit(ids, sampling, lambda item, box=box: isinstance(item, Completion) and box.put(item))
                    break
                except GeneratorBusy:
                    self._closing.wait(0.05)
        return [box.get() for box in done]

    def close(self) -> None:
        """Stop the thread once the requests under way are answered."""
        self._closing.set()
        self._thread.join()

    @property
    def busy(self) -> int:
        return self._count

    def _run(self) -> None:
        # The engine answers only the thread that made it.
        try:
            self.engine = self.og.Engine(self.model)
            self._events = self.engine.create_event_buffer(64)
            self.slots = self.engine.get_capabilities().configured_max_batch_size
        except Exception as err:
            self._failed = err
            return
        finally:
            self._ready.set()
        try:
            while not (self._closing.is_set() and not self._count):
                self._step()
        except Exception as err:  # every request under way or waiting gets its end; none waits for good
            log.exception("the generator of %s failed", self.bundle_dir)
            self._broken = f"the generator of {self.bundle_dir} failed: {type(err).__name__}: {err}"
            for request in self._abandoned():
                self._end(request, "error")

    def _step(self) -> None:
        self._admit()
        if not (self._active or self._alone):
            return
        self._cancel_gone()
        if self._active:
            for event in self.engine.run(self._events):
                self._on_event(event)
        for alone in list(self._alone):
            self._step_alone(*alone)

    def _abandoned(self) -> list[Request]:
        waiting = []
        while not self._incoming.empty():
            waiting.append(self._incoming.get_nowait())
        return [r for r, _, _ in self._active.values()] + [r for r, _, _ in self._alone] + waiting

    def _admit(self) -> None:
        """Begin the turns of new requests (waiting a little for one when nothing is under way)."""
        idle = not (self._active or self._alone)
        try:
            request = self._incoming.get(timeout=0.05) if idle else self._incoming.get_nowait()
        except queue.Empty:
            return
        while request is not None:
            try:
                self._begin(request)
            except Exception as err:  # a request the engine refuses fails alone
                log.warning("generation refused: %s", err)
                self._end(request, "error")
            try:
                request = self._incoming.get_nowait()
            except queue.Empty:
                request = None

    def _begin(self, request: Request) -> None:
        import numpy as np

        og, sampling = self.og, request.sampling
        if sampling.seed is not None and sampling.temperature > 0:
            params = og.GeneratorParams(self.model)
            params.set_search_options(
                max_length=len(request.ids) + sampling.max_tokens,
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=0,
                random_seed=sampling.seed,
            )
            generator = og.Generator(self.model, params)
            generator.append_tokens(request.ids)
            self._alone.append((request, generator, self.decoder.create_stream()))
            return
        handle = self.engine.create_request()
        options = og.TurnOptions(handle)
        options.set_max_generated_tokens(sampling.max_tokens)
        options.set_do_sample(sampling.temperature > 0)
        if sampling.temperature > 0:
            options.set_temperature(sampling.temperature)
            options.set_top_p(sampling.top_p)
            options.set_top_k(0)
        turn = handle.begin_turn(np.asarray(request.ids, dtype=np.int32), options)
        self._active[handle] = (request, turn, self.decoder.create_stream())

    def _cancel_gone(self) -> None:
        for handle, (request, turn, _) in self._active.items():
            if request.cancelled.is_set() and not request.cancel_sent:
                handle.cancel_turn(turn)
                request.cancel_sent = True
        for alone in [a for a in self._alone if a[0].cancelled.is_set()]:
            self._alone.remove(alone)
            self._end(alone[0], "cancelled")

    def _on_event(self, event) -> None:
        flags = self.og.EngineEventFlags
        handle = next((h for h in self._active if h == event.request), None)
        if handle is None:
            return
        request, turn, stream = self._active[handle]
        if event.flags & flags.TOKEN and self._take(request, event.token, stream) and not request.cancel_sent:
            handle.cancel_turn(turn)  # a stop string: the turn ends as cancelled, answered as stopped
            request.cancel_sent = True
        if event.flags & (flags.TURN_FINISHED | flags.FAILED):
            del self._active[handle]
            handle.close()
            self._end(request, self._reason(request, event))

    def _take(self, request: Request, token: int, stream) -> bool:
        """One generated token: counted, decoded and delivered (an end-of-sequence token adds no text). True when
        the request reached a stop string."""
        if request.stopped_at is not None:
            return False  # tokens the engine made before the cancel took hold
        request.tokens.append(int(token))
        return token not in self.end_ids and request.add(stream.decode(token))

    def _reason(self, request: Request, event) -> str:
        reasons = self.og.FinishReason
        if request.stopped_at is not None or event.finish_reason in (reasons.EOS, reasons.STOP_STRING):
            return "stop"
        if event.finish_reason in (reasons.MAX_GENERATED_TOKENS, reasons.MAX_SESSION_TOKENS):
            return "length"
        return "cancelled" if event.finish_reason == reasons.CANCELLED else "error"

    def _step_alone(self, request: Request, generator, stream) -> None:
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        stopped = self._take(request, token, stream) or token in self.end_ids
        if stopped or generator.is_done() or len(request.tokens) >= request.sampling.max_tokens:
            self._alone.remove((request, generator, stream))
            self._end(request, "stop" if stopped else "length")

    def _end(self, request: Request, reason: str) -> None:
        with self._lock:
            self._count -= 1
        try:
            request.finish(reason)
        except Exception:  # a caller's delivery that fails (a loop closed) must not stop the engine's thread
            log.exception("delivering a finished generation failed")
