"""What a request to the server may be, checked before anything is scored: the body's size (413; a gzip body counts
inflated), its encoding (415), and its texts (400: how many, how long, not empty). A bad request gets its message;
the server goes on serving."""

from __future__ import annotations

from dataclasses import dataclass

from mlserver.codecs import StringCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

INPUT_NAME = "text"


class BadRequest(MLServerError):
    """Answered with 400 and the message; the server goes on serving. `param`: the request's field at fault."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message, status_code=400)
        self.param = param


class PromptTooLong(BadRequest):
    """A rendered prompt over serve.max_prompt_tokens."""


class TooBusy(MLServerError):
    """The generator's slots and waiting room are full: 429, the client may try again."""

    def __init__(self, message: str):
        super().__init__(message, status_code=429)


@dataclass(frozen=True)
class Limits:
    max_batch: int = 64
    max_text_chars: int = 2000
    max_request_bytes: int = 1 << 20  # a request's body; larger ones get 413 before they are read whole


@dataclass(frozen=True)
class GenerationLimits:
    """What one request to a generator may ask: its rendered prompt's tokens (400 above), its response's tokens (a
    larger max_tokens is capped), and how many requests may wait beside those generating (429 above)."""

    max_prompt_tokens: int = 1024
    max_tokens: int = 256
    max_waiting: int = 16


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
            return await _refuse(
                scope, send, 413, f"request body over {self.max_bytes} bytes (serve.max_request_bytes)"
            )
        encoding = headers.get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
        if encoding not in ("identity", "gzip"):
            return await _refuse(scope, send, 415, f"Content-Encoding {encoding!r}: send the body as is or gzip")
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
                return await _refuse(scope, send, 400, f"the gzip body cannot be inflated: {err}")
            if len(body) > self.max_bytes:
                inflated = " inflated" if inflater else ""
                return await _refuse(
                    scope, send, 413, f"request body over {self.max_bytes} bytes{inflated} (serve.max_request_bytes)"
                )
            more = message.get("more_body", False)
        if inflater and not inflater.eof:
            return await _refuse(scope, send, 400, "the gzip body ends before its gzip stream does")
        if inflater:  # the app gets the inflated body, as if it had been sent so
            scope = dict(
                scope,
                headers=[(k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")]
                + [(b"content-length", str(len(body)).encode())],
            )

        replayed = False

        async def replay():
            # The body once; then the client's own messages, so that a streaming response hears it disconnect.
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send)


async def _refuse(scope, send, status: int, error: str) -> None:
    import json

    if scope["path"].startswith("/v1/"):  # OpenAI's routes answer in OpenAI's error shape
        error = {"message": error, "type": "invalid_request_error", "param": None, "code": None}
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


class SamplingRequest(BaseModel):
    """How a generate request may ask its response to be sampled, by OpenAI's names; other fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None

    def sampling(self, limits: GenerationLimits, max_tokens: int | None = None):
        """The Sampling asked for: max_tokens (or `max_tokens` given, e.g. max_completion_tokens) capped by
        serve.max_tokens, which is also the default; OpenAI's defaults otherwise (temperature 1, top_p 1)."""
        from components.deploy.onnx_generator import Sampling

        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if len(stops) > 4 or not all(stops):
            raise BadRequest("stop: at most 4 strings, none of them empty", "stop")
        wanted = max_tokens or self.max_tokens or limits.max_tokens
        temperature = 1.0 if self.temperature is None else self.temperature
        return Sampling(min(wanted, limits.max_tokens), temperature, self.top_p or 1.0, tuple(stops), self.seed)


def parse(model: type[BaseModel], data):
    """`data` as `model`; its first problem a BadRequest naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise BadRequest(f"{param or 'the body'}: {first['msg']}", param) from None
