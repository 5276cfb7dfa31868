"""OpenAI's HTTP API on the server of a generator, so that OpenAI's SDKs and the tools built on them call it as they
are: POST /v1/chat/completions and /v1/completions (server-sent events with stream: true) and GET /v1/models,
answered by the TextGeneratorRuntime (components/deploy/generator_runtime.py) the server loaded. Errors come in
OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with the status its SDKs map to their exceptions."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from mlserver.errors import MLServerError
from pydantic import BaseModel, Field

from components.deploy.onnx_generator import Completion
from components.deploy.request_limits import BadRequest, PromptTooLong, SamplingRequest, parse

log = logging.getLogger(__name__)
ROUTES = ("POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models")
ANSWERED = ("stop", "length")  # the finish reasons a client receives; cancelled and error are the server's


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None  # an assistant's turn that called a tool has none

    def turn(self) -> dict:
        parts = self.content or ""
        content = parts if isinstance(parts, str) else "".join(p.text for p in parts)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class StreamOptions(BaseModel):
    include_usage: bool = False


class OpenAIRequest(SamplingRequest):
    model: str
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None  # refused when asked for: the engine gives no log-probabilities


class ChatRequest(OpenAIRequest):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def conversation(self) -> list[dict]:
        if not any(m.role == "user" for m in self.messages):
            raise BadRequest("messages: at least one message with the role 'user'", "messages")
        return [m.turn() for m in self.messages]


class CompletionRequest(OpenAIRequest):
    prompt: str | list[str]

    def conversation(self) -> list[dict]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if len(prompts) != 1:
            raise BadRequest("prompt: one string per request", "prompt")
        return [{"role": "user", "content": prompts[0]}]


class UnknownModel(MLServerError):
    def __init__(self, asked: str, served: str):
        super().__init__(f"The model '{asked}' does not exist; this server serves '{served}'", status_code=404)


def openai_router(models, name: str):
    """The routes, answering for the model `name` of MLServer's model registry `models`."""
    router, created = APIRouter(), int(time.time())

    model = {"id": name, "object": "model", "created": created, "owned_by": "lifecycle"}

    @router.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model]}

    @router.get("/v1/models/{asked}")
    async def retrieve_model(asked: str):
        return model if asked == name else error_response(UnknownModel(asked, name))

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await answer(request, models, name, chat=True)

    @router.post("/v1/completions")
    async def completions(request: Request):
        return await answer(request, models, name, chat=False)

    return router


async def answer(request: Request, models, name: str, chat: bool):
    """One request: its response whole, or streamed as server-sent events; an error in OpenAI's shape."""
    response_id, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())
    try:
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest("the body is not JSON") from None
        asked = parse(ChatRequest if chat else CompletionRequest, body)
        if asked.model != name:
            raise UnknownModel(asked.model, name)
        if asked.n != 1:
            raise BadRequest(f"n: {asked.n} choices asked; this server gives 1", "n")
        if asked.logprobs:
            raise BadRequest("logprobs: this server gives no log-probabilities", "logprobs")
        runtime = await models.get_model(name)
        sampling = asked.sampling(runtime.limits, getattr(asked, "max_completion_tokens", None))
        generation = await runtime.generate(asked.conversation(), sampling, response_id)
    except MLServerError as err:
        return error_response(err)
    except Exception as err:
        log.exception("the request to %s failed", request.url.path)
        return error_response(MLServerError(f"{type(err).__name__}: {err}"[:500], status_code=500))
    shape = Shape(chat, response_id, created, name, generation.version)
    if asked.stream:
        usage = bool(asked.stream_options and asked.stream_options.include_usage)
        return StreamingResponse(events(generation, shape, usage), media_type="text/event-stream")
    done = await until_done(request, generation)
    if done.finish_reason not in ANSWERED:
        return error_response(MLServerError(f"version {generation.version} failed to generate", status_code=500))
    return JSONResponse(shape.whole(done))


async def until_done(request, generation) -> Completion:
    """The whole response; a client that goes away before it ends cancels it."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        generation.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await generation.result()
    finally:
        watcher.cancel()


async def events(generation, shape: Shape, include_usage: bool):
    """The response as server-sent events: the role, the text as it comes, the finish reason, the usage if asked,
    [DONE]. A client that goes away closes this (Starlette cancels it), which cancels the generation."""
    if shape.chat:
        yield sse(shape.chunk({"role": "assistant", "content": ""}))
    async for item in generation.pieces():
        if not isinstance(item, Completion):
            yield sse(shape.chunk({"content": item} if shape.chat else item))
        elif item.finish_reason not in ANSWERED:
            failed = MLServerError(f"version {generation.version} failed to generate", status_code=500)
            yield sse(error_body(failed))
            return
        else:
            yield sse(shape.chunk({} if shape.chat else "", item.finish_reason))
            if include_usage:
                yield sse(shape.usage_chunk(item))
    yield b"data: [DONE]\n\n"


def sse(data: dict) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


@dataclass(frozen=True)
class Shape:
    """A response's objects as OpenAI's API has them; `version` (the registered version) is its system_fingerprint."""

    chat: bool
    id: str
    created: int
    model: str
    version: str = ""

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": self.version}  # fmt: skip

    def whole(self, done: Completion) -> dict:
        content = {"message": {"role": "assistant", "content": done.text}} if self.chat else {"text": done.text}
        choice = {"index": 0, **content, "logprobs": None, "finish_reason": done.finish_reason}
        return {**self._head("chat.completion" if self.chat else "text_completion"), "choices": [choice],
                "usage": usage(done)}  # fmt: skip

    def chunk(self, delta: dict | str, finish_reason: str | None = None) -> dict:
        content = {"delta": delta} if self.chat else {"text": delta}
        choice = {"index": 0, **content, "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": [choice]}

    def usage_chunk(self, done: Completion) -> dict:
        return {**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": [],
                "usage": usage(done)}  # fmt: skip


def usage(done: Completion) -> dict:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error",
               429: "rate_limit_exceeded"}  # fmt: skip


def error_body(err: MLServerError) -> dict:
    code = {PromptTooLong: "context_length_exceeded", UnknownModel: "model_not_found"}.get(type(err))
    return {
        "error": {
            "message": str(err),
            "type": ERROR_TYPES.get(err.status_code, "server_error"),
            "param": "model" if isinstance(err, UnknownModel) else getattr(err, "param", None),
            "code": code,
        }
    }


def error_response(err: MLServerError) -> JSONResponse:
    retry = {"Retry-After": "1"} if err.status_code == 429 else None  # OpenAI's SDKs wait this long, then retry
    return JSONResponse(error_body(err), status_code=err.status_code, headers=retry)
