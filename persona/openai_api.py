"""An OpenAI-compatible chat-completions API for a persona bot (FastAPI): what chat clients and frameworks speak.

``POST /v1/chat/completions`` takes ``messages`` (an optional first ``system`` message is the persona text, then
``user`` and ``assistant`` messages alternating, ending with ``user``), ``temperature`` (0: greedy), ``top_p``,
``max_tokens`` / ``max_completion_tokens``, ``seed``, ``stop`` and ``stream`` (server-sent events of
``chat.completion.chunk`` deltas, then ``data: [DONE]``), and answers with ``usage`` token counts.
``GET /v1/models`` and ``GET /health`` too. A bad request gets a 4xx and an OpenAI-style error
``{"error": {"message", "type", "param", "code"}}``, never a traceback; a full queue gets a 429.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from persona.batching import QueueFull, ReplyBatcher, ReplyEvent, ReplyRequest
from persona.chat import split_sentences
from persona.generation import DecodingArguments

ROLES = ("system", "user", "assistant")
REPLY_TIMEOUT_S = 300  # a request that waited this long for its reply is answered with an error


class APIError(Exception):
    """A request the API refuses: the HTTP status and the OpenAI error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        """The error as OpenAI sends it."""
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


@dataclass
class Limits:
    """What the server accepts: the largest reply (``max_tokens``) and request body, in tokens and bytes."""

    max_tokens: int = 256
    max_body_bytes: int = 256 * 1024


@dataclass
class ChatRequest:
    """A validated chat-completions request."""

    persona: list[str]
    history: list[str]
    decoding: DecodingArguments
    stop: list[str]
    seed: int | None
    stream: bool
    include_usage: bool


def _number(body: dict, name: str, kind: type, low: float | None = None, high: float | None = None) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise APIError(400, f"'{name}' must be {'a number' if kind is float else 'an integer'}, not {json.dumps(value)}", param=name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise APIError(400, f"'{name}' must be between {low} and {high}, not {value}", param=name)
    return value


def parse_messages(messages: Any) -> tuple[list[str], list[str]]:
    """The persona (the system message's sentences) and the history (user and assistant turns, ending with the user's)."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list of {role, content} objects", param="messages")
    persona: list[str] = []
    history: list[str] = []
    expected = "user"
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise APIError(400, f"{param} must be an object with 'role' and 'content'", param=param)
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise APIError(400, f"{param}.role must be one of {', '.join(ROLES)}, not {json.dumps(role)}", param=f"{param}.role")
        if not isinstance(content, str):
            raise APIError(400, f"{param}.content must be a string", param=f"{param}.content")
        if role == "system":
            if index:
                raise APIError(400, f"{param}: the system message (the persona) must come first", param=param)
            persona = split_sentences(content)
            continue
        if role != expected:
            raise APIError(400, f"{param}: user and assistant messages must alternate, starting with the user's; this one is the {role}'s", param=param)
        history.append(content)
        expected = "assistant" if role == "user" else "user"
    if not history or expected != "assistant":
        raise APIError(400, "the last message must be the user's: the bot answers it", param="messages")
    return persona, history


def parse_chat_request(body: Any, defaults: DecodingArguments, limits: Limits) -> ChatRequest:
    """A :class:`ChatRequest` from a request body, or an :class:`APIError` that says what is wrong."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    persona, history = parse_messages(body.get("messages"))
    temperature = _number(body, "temperature", float, 0, 2)
    top_p = _number(body, "top_p", float, 0, 1)
    max_tokens = _number(body, "max_completion_tokens", int, 1, limits.max_tokens) or _number(body, "max_tokens", int, 1, limits.max_tokens)
    seed = _number(body, "seed", int)
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise APIError(400, "'stop' must be a string or a list of at most 4 strings", param="stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false", param="stream")
    options = body.get("stream_options") or {}
    decoding = replace(defaults, max_length=max_tokens or defaults.max_length)
    if temperature == 0:
        decoding = replace(decoding, do_sample=False)
    elif temperature is not None or top_p is not None:
        decoding = replace(decoding, do_sample=True, temperature=temperature or defaults.temperature, top_p=top_p or defaults.top_p)
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    return ChatRequest(persona, history, decoding, stop, seed, stream, include_usage)


async def reply_events(batcher: ReplyBatcher, request: ChatRequest, persona: list[str]) -> AsyncIterator[ReplyEvent]:
    """Submit ``request`` (with ``persona`` when it brings none) and yield its events as they come."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[ReplyEvent] = asyncio.Queue()
    batcher.submit(ReplyRequest(
        request.persona or persona, request.history, request.decoding, lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
        stop=request.stop, seed=request.seed,
    ))
    deadline = loop.time() + REPLY_TIMEOUT_S
    while True:
        event = await asyncio.wait_for(events.get(), timeout=max(deadline - loop.time(), 0))
        yield event
        if event.finish_reason:
            return


def create_app(batcher: ReplyBatcher, model_id: str, *, defaults: DecodingArguments, persona: list[str], limits: Limits, api_key: str | None) -> FastAPI:
    """The FastAPI app of the API (the web page is mounted on it by :mod:`persona.serve`)."""
    app = FastAPI(title="persona", docs_url=None, redoc_url=None)

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error.response()

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), api_key.encode()):
            raise APIError(401, "a valid API key is required: 'Authorization: Bearer KEY'", type="authentication_error", code="invalid_api_key")

    async def read_json(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise APIError(413, f"the request body is over {limits.max_body_bytes} bytes", code="request_too_large")
        raw = await request.body()
        if len(raw) > limits.max_body_bytes:
            raise APIError(413, f"the request body is over {limits.max_body_bytes} bytes", code="request_too_large")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise APIError(400, f"the request body is not valid JSON ({error})") from None

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_id}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        authorize(request)
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "persona"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        body = await read_json(request)
        chat = parse_chat_request(body, defaults, limits)
        if body.get("model") not in (None, model_id):
            raise APIError(404, f"the model '{body['model']}' is not served here; this server serves '{model_id}'", param="model", code="model_not_found")
        try:
            events = reply_events(batcher, chat, persona)
            first = await anext(events)
        except QueueFull as error:
            raise APIError(429, f"the server is busy ({error}); try again shortly", type="rate_limit_error", code="queue_full") from None
        completion = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_id}
        if chat.stream:
            return StreamingResponse(_sse(completion, first, events, chat.include_usage), media_type="text/event-stream")
        content = []
        event = first
        while True:
            content.append(event.delta)
            if event.finish_reason:
                break
            event = await anext(events)
        if event.finish_reason == "error":
            raise APIError(500, f"generation failed: {event.error}", type="server_error")
        return {
            **completion,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(content)}, "finish_reason": event.finish_reason}],
            "usage": _usage(event),
        }

    return app


def _usage(event: ReplyEvent) -> dict:
    return {"prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens, "total_tokens": event.prompt_tokens + event.completion_tokens}


async def _sse(completion: dict, first: ReplyEvent, events: AsyncIterator[ReplyEvent], include_usage: bool) -> AsyncIterator[str]:
    """The streamed answer: a role chunk, content chunks, the finishing chunk (and usage), then ``[DONE]``."""

    def chunk(delta: dict, finish_reason: str | None = None, **extra) -> str:
        body = {**completion, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    event = first
    while True:
        if event.delta:
            yield chunk({"content": event.delta})
        if event.finish_reason:
            break
        event = await anext(events)
    if event.finish_reason == "error":
        yield f"data: {json.dumps({'error': {'message': f'generation failed: {event.error}', 'type': 'server_error', 'param': None, 'code': None}})}\n\n"
    else:
        yield chunk({}, event.finish_reason)
        if include_usage:
            yield f"data: {json.dumps({**completion, 'object': 'chat.completion.chunk', 'choices': [], 'usage': _usage(event)})}\n\n"
    yield "data: [DONE]\n\n"
