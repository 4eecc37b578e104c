"""An OpenAI-compatible chat-completions API for a persona bot (FastAPI): what chat clients and frameworks speak.

``POST /v1/chat/completions`` takes ``messages`` (an optional first ``system`` or ``developer`` message is the persona
text, then ``user`` and ``assistant`` messages alternating, ending with ``user``; a content is a string or a list of
text parts), ``temperature`` (0: greedy), ``top_p``, ``max_tokens`` / ``max_completion_tokens``, ``seed``, ``stop``,
``n`` (each choice a row of the running batch), ``logprobs`` / ``top_logprobs`` (each generated token's
log-probability under the model, before temperature and the other processors, and its most likely alternatives)
and ``stream`` (server-sent events of ``chat.completion.chunk`` deltas, then ``data: [DONE]``), and answers with
``usage`` token counts; a conversation longer than the history window (the reference's ``max_history``) is read from
its last utterances, and the header ``X-Persona-History-Cut`` says how many were left out. ``GET /v1/models`` and
``GET /health`` too. The request is validated by its typed model
(:mod:`persona.serving.protocol`); a bad request gets a 4xx and an OpenAI-style error
``{"error": {"message", "type", "param", "code"}}``, never a traceback; a full queue gets a 429.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, suppress
from dataclasses import dataclass, replace

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from persona.data.conversation import MessageError, read_conversation
from persona.errors import ConfigError
from persona.model.generation import DecodingArguments
from persona.serving.context import ContextTooLong, ControlTextRefused
from persona.serving.engine import (
    Engine,
    QueueFull,
    QueueTooSmall,
    ReplyEvent,
    Unsupported,
    WorkerStopped,
    choice_seed,
)
from persona.serving.metrics import ServerMetrics
from persona.serving.protocol import (
    APIError,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    Message,
    ModelCard,
    ModelList,
    Usage,
    body_too_large,
    first_error,
)

logger = logging.getLogger(__name__)
PER_REQUEST = (  # copied to the decoding settings
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "persona_weight",
    "rerank_samples",
)


def generation_error(event: ReplyEvent) -> APIError:
    """The error of a reply that ended with one, with the status and code its engine gave it: a 4xx for what the
    request itself caused (its text, a context too long for the engine), a 503 when the decoding worker stopped, a
    502 when the engine in front of which persona-serve runs failed, else a 500 whose message names the request id
    under which the server logged the traceback."""
    if event.status == 429:
        return APIError(429, event.error, type="rate_limit_error", code=event.code, headers={"Retry-After": "1"})
    if 400 <= event.status < 500:
        return APIError(event.status, event.error, param="messages", code=event.code)
    status = event.status if event.status >= 500 else 500
    return APIError(status, event.error, type="server_error", code=event.code or "generation_failed")


@dataclass
class ChatRequest:
    """A validated chat-completions request, as an engine takes it."""

    persona: list[str]
    history: list[str]
    decoding: DecodingArguments
    stop: list[str]
    seed: int | None
    stream: bool
    include_usage: bool
    choices: int = 1
    top_logprobs: int | None = None  # None: no log-probabilities; k: each token's and its k likeliest alternatives


def parse_messages(messages: list[Message]) -> tuple[list[str], list[str]]:
    """The persona and the history of a request's messages, read by the rules of
    :mod:`persona.data.conversation`, or an :class:`APIError` naming the message; the user must have spoken last (or
    nobody yet: the bot then opens the conversation)."""
    try:
        conversation = read_conversation((message.role, message.content) for message in messages)
    except MessageError as error:
        param = f"messages[{error.index}]"
        raise APIError(400, f"{param}: {error.what}; {error.fix}", param=param) from None
    if not conversation.awaits_reply:
        raise APIError(400, "the last message must be the user's: the bot answers it", param="messages")
    return conversation.persona, conversation.history


def chat_request(body: ChatCompletionRequest, defaults: DecodingArguments, max_tokens_cap: int) -> ChatRequest:
    """A :class:`ChatRequest` from a typed request body, or an :class:`APIError` that says what is wrong."""
    persona, history = parse_messages(body.messages)
    for name in ("max_completion_tokens", "max_tokens"):
        value = getattr(body, name)
        if value is not None and value > max_tokens_cap:
            raise APIError(400, f"'{name}' must be at most {max_tokens_cap}, not {value}", param=name)
    max_tokens = body.max_completion_tokens or body.max_tokens
    given = {name: getattr(body, name) for name in PER_REQUEST if getattr(body, name) is not None}
    if body.temperature is not None or body.top_p is not None:  # a temperature below GREEDY_BELOW decodes greedily
        given["do_sample"] = True
        given["temperature"] = defaults.temperature if body.temperature is None else body.temperature
        given["top_p"] = defaults.top_p if body.top_p is None else body.top_p
    try:
        decoding = replace(defaults, max_length=max_tokens or defaults.max_length, **given)
    except ConfigError as error:  # settings that are each in range but not together (rerank_samples, greedy)
        raise APIError(400, str(error), param=error.where) from None
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    top_logprobs = (body.top_logprobs or 0) if body.logprobs else None
    return ChatRequest(
        persona, history, decoding, body.stop, body.seed, body.stream, include_usage, body.n, top_logprobs
    )


def _key_check(api_key: str | None) -> Callable:
    """The dependency of every keyed route: a 401 unless the request carries ``Authorization: Bearer API_KEY``
    (nothing to check without a key)."""

    async def check(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), api_key.encode()):
            message = "a valid API key is required: 'Authorization: Bearer KEY'"
            raise APIError(401, message, type="authentication_error", code="invalid_api_key")

    return check


def _queued_replies(engine: Engine, chat: ChatRequest, persona: list[str], request_id: str) -> list:
    """The reply streams of the chat's ``n`` choices, queued together (all or none); the engine's refusals as the
    API's errors (400 for more choices than the queue holds, 503 when the worker has stopped, 429 when busy)."""
    try:
        return engine.replies(
            persona,
            chat.history,
            chat.decoding,
            # a reranked choice's samples are seeded from its own seed on: choices k samples apart never share one
            seeds=[choice_seed(chat.seed, index * chat.decoding.samples) for index in range(chat.choices)],
            stop=chat.stop,
            top_logprobs=chat.top_logprobs,
            request_id=request_id,
        )
    except QueueTooSmall as error:
        asked = f"n is {chat.choices}"
        if chat.decoding.samples > 1:  # each choice is its samples
            asked += f" with rerank_samples {chat.decoding.samples} ({error.asked} replies)"
        message = f"{asked}, but this server queues at most {error.limit} replies at once"
        raise APIError(400, message + " (persona-serve --max_queue)", param="n", code="too_many_choices") from None
    except WorkerStopped as error:
        raise APIError(503, str(error), type="server_error", code="worker_stopped") from None
    except Unsupported as error:
        raise APIError(400, str(error), param=error.field, code="unsupported_field") from None
    except QueueFull as error:
        message = f"the server is busy ({error}); try again shortly"
        raise APIError(
            429, message, type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"}
        ) from None


async def _read_request(request: Request, body_limit: int) -> ChatCompletionRequest:
    """The typed request, or the 4xx that says what is wrong with it (its type, its size, its JSON, a field)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise APIError(
            415,
            f"the request body must be JSON (Content-Type: application/json), not '{kind or 'none'}'",
            code="unsupported_media_type",
        )
    try:
        raw = await request.body()  # BodyLimit (the server's wrapper) has refused any body over the limit
    except ClientDisconnect:  # BodyLimit cut it short: its 413 is the answer
        raise body_too_large(body_limit) from None
    try:
        body = ChatCompletionRequest.model_validate_json(raw)
    except ValidationError as error:
        message, param = first_error(error)
        raise APIError(400, message, param=param) from None
    if body.ignored_fields():
        logger.info("Ignored request fields: %s", ", ".join(body.ignored_fields()))
    return body


def _check_context(engine: Engine, chat: ChatRequest, persona: list[str]) -> None:
    """A 400 ``context_length_exceeded`` when the persona and the last message with ``max_tokens`` cannot fit, a 400
    ``control_text`` for a message the engine would read a control token in."""
    try:
        engine.check_context(persona, chat.history, chat.decoding.max_length)
    except ContextTooLong as error:
        message = f"{error}: shorten them or lower max_tokens"
        raise APIError(400, message, param="messages", code="context_length_exceeded") from None
    except ControlTextRefused as error:
        raise APIError(400, f"{error}: remove it", param="messages", code="control_text") from None


def create_app(engine: Engine, model_id: str, *, defaults: DecodingArguments, persona: list[str], settings) -> FastAPI:
    """The FastAPI app of the API over ``engine`` (the web page is mounted on it by :mod:`persona.serving.server`);
    ``settings``: the server's :class:`~persona.serving.server.ServeArguments` (``api_key``, ``max_tokens_cap``,
    ``max_body_bytes``)."""
    app = FastAPI(title="persona", docs_url=None, redoc_url=None)
    model_card = ModelCard(id=model_id)
    metrics = ServerMetrics(engine)
    app.middleware("http")(metrics.observe)

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.get("/health")
    async def health() -> dict:
        reason = await engine.unready()
        if reason:
            code = "engine_unavailable" if engine.alive() else "worker_stopped"
            raise APIError(503, reason, type="server_error", code=code)
        return {"status": "ok", "model": model_id}

    keyed = APIRouter(dependencies=[Depends(_key_check(settings.api_key))])

    @keyed.get("/metrics")
    async def prometheus() -> Response:
        body, media_type = metrics.exposition()
        return Response(body, media_type=media_type)

    @keyed.get("/v1/models")
    async def models() -> dict:
        return ModelList(data=[model_card]).model_dump()

    @keyed.get("/v1/models/{name:path}")
    async def model(name: str) -> dict:
        if name != model_id:
            raise _model_not_found(name, model_id)
        return model_card.model_dump()

    @keyed.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _read_request(request, settings.max_body_bytes)
        chat = chat_request(body, defaults, settings.max_tokens_cap)
        if body.model not in (None, model_id):
            raise _model_not_found(body.model, model_id)
        _check_context(engine, chat, chat.persona or persona)
        completion = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_id}
        replies = _queued_replies(engine, chat, chat.persona or persona, completion["id"])
        # queued at once, they join together; a choice queued behind others waits here, as its client may not
        firsts = await _unless_disconnected(request, asyncio.gather(*(anext(events) for events in replies)))
        if firsts is None:
            for events in replies:
                await events.aclose()
            return Response(status_code=499)
        await _refuse_early_errors(firsts, replies)
        events = _merged(list(zip(firsts, replies)))
        headers = _window_note(chat.history, engine.max_history)
        logprobs = chat.top_logprobs is not None
        if chat.stream:
            stream = _sse(completion, events, chat.choices, chat.include_usage, metrics.count_tokens, logprobs)
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
        whole = await _unless_disconnected(
            request, _completion(completion, events, chat.choices, metrics.count_tokens, logprobs)
        )
        if whole is None:  # the client has gone: nobody reads this answer
            return Response(status_code=499)
        return JSONResponse(whole, headers=headers)

    app.include_router(keyed)  # before the catch-all below, which answers whatever these routes do not

    app.api_route("/v1/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])(_elsewhere)
    return app


def _model_not_found(name: str, model_id: str) -> APIError:
    """The 404 for a request that names a model this server does not serve."""
    message = f"the model '{name}' is not served here; this server serves '{model_id}'"
    return APIError(404, message, param="model", code="model_not_found")


async def _elsewhere(path: str, request: Request):
    """Any other route under /v1: a 405 naming the method a known route takes, else a 404 naming the routes."""
    allowed = {"models": "GET", "chat/completions": "POST"}.get(path)
    if allowed:
        raise APIError(
            405,
            f"/v1/{path} takes {allowed}, not {request.method}",
            code="method_not_allowed",
            headers={"Allow": allowed},
        )
    raise APIError(404, f"no route /v1/{path}: the API has /v1/models and /v1/chat/completions", code="not_found")


HISTORY_CUT_HEADER = "X-Persona-History-Cut"


async def _refuse_early_errors(firsts: list[ReplyEvent], replies: list[AsyncIterator[ReplyEvent]]) -> None:
    """The error of a choice whose first event is one (before anything was sent: the answer's own status, streamed or
    not), the other choices stopped."""
    failed = next((event for event in firsts if event.finish_reason == "error"), None)
    if failed is None:
        return
    for events in replies:
        await events.aclose()
    raise generation_error(failed)


def _window_note(history: list[str], max_history: int) -> dict[str, str]:
    """The header that says how many of the oldest utterances the history window left out (the reference's
    ``max_history`` exchanges and the partner's last utterance are kept), logged too; none when all were read."""
    cut = max(len(history) - (2 * max_history + 1), 0)
    if not cut:
        return {}
    logger.info(
        "The history window left out the %d oldest utterance(s) of a request (max_history %d)", cut, max_history
    )
    return {HISTORY_CUT_HEADER: str(cut)}


async def _merged(
    replies: list[tuple[ReplyEvent, AsyncIterator[ReplyEvent]]],
) -> AsyncIterator[tuple[int, ReplyEvent]]:
    """The events of several replies (each its first event and the rest) as they come, with the index of each; a
    reply whose events fail (a time-out) ends with an error event. Stopped early (closed or cancelled), it stops every
    reply."""
    arrived: asyncio.Queue[tuple[int, ReplyEvent]] = asyncio.Queue()

    async def pump(index: int, event: ReplyEvent, events: AsyncIterator[ReplyEvent]) -> None:
        try:
            while True:
                await arrived.put((index, event))
                if event.finish_reason:
                    return
                event = await anext(events)
        except Exception as error:
            await arrived.put((index, ReplyEvent(finish_reason="error", error=f"{type(error).__name__}: {error}")))

    tasks = [asyncio.create_task(pump(index, *reply)) for index, reply in enumerate(replies)]
    try:
        remaining = len(tasks)
        while remaining:
            index, event = await arrived.get()
            yield index, event
            remaining -= bool(event.finish_reason)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _, events in replies:  # a reply whose pump never ran, or stopped at its yield, stops its row too
            await events.aclose()


async def _unless_disconnected(request: Request, answer: Awaitable[dict]) -> dict | None:
    """``answer``'s result, or None once the client has disconnected: the answer is then cancelled, and with it its
    replies (their rows leave the running batch at the next step, their queued requests are dropped), as a stream's
    are when its client leaves."""
    task, gone = asyncio.ensure_future(answer), asyncio.ensure_future(_disconnection(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        logger.info("A client left before its answer: its replies are stopped")
        return None
    finally:
        for pending in (task, gone):
            if not pending.done():
                pending.cancel()
                with suppress(asyncio.CancelledError):
                    await pending


async def _disconnection(request: Request) -> None:
    """Returns when the client disconnects: its request's body read, the next ASGI message is its disconnection."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _completion(
    completion: dict,
    events: AsyncIterator[tuple[int, ReplyEvent]],
    count: int,
    count_tokens: Callable[[int, int], None],
    logprobs: bool,
) -> dict:
    """The whole answer of a request that is not streamed: ``count`` choices (with their tokens' log-probabilities
    when ``logprobs``)."""
    content: list[list[str]] = [[] for _ in range(count)]
    tokens: list[list] = [[] for _ in range(count)]
    ends: list[ReplyEvent] = [ReplyEvent()] * count
    async with aclosing(events):
        async for index, event in events:
            content[index].append(event.delta)
            tokens[index] += event.logprobs
            if event.finish_reason == "error":
                raise generation_error(event)
            if event.finish_reason:
                ends[index] = event
    usage = _usage(ends)
    count_tokens(usage.prompt_tokens, usage.completion_tokens)
    choices = [
        Choice(
            index=index,
            message=AssistantMessage(content="".join(content[index])),
            logprobs={"content": tokens[index]} if logprobs else None,
            finish_reason=end.finish_reason,
        )
        for index, end in enumerate(ends)
    ]
    return ChatCompletion(**completion, choices=choices, usage=usage).model_dump()


def _usage(ends: list[ReplyEvent]) -> Usage:
    """OpenAI's usage of a request: its prompt once, the tokens of all its choices."""
    prompt, completion = ends[0].prompt_tokens, sum(end.completion_tokens for end in ends)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


async def _sse(
    completion: dict,
    events: AsyncIterator[tuple[int, ReplyEvent]],
    count: int,
    include_usage: bool,
    count_tokens: Callable[[int, int], None],
    logprobs: bool,
) -> AsyncIterator[str]:
    """The streamed answer: a role chunk per choice, content chunks as they come (each with the log-probabilities
    of the tokens it completes when ``logprobs`` is given), each choice's finishing chunk at its end (then the
    usage), then ``[DONE]``."""

    def chunk(index: int, delta: Delta, finish_reason: str | None = None, tokens: list = ()) -> str:
        scored = {"content": list(tokens)} if logprobs and tokens else None
        choice = ChunkChoice(index=index, delta=delta, finish_reason=finish_reason, logprobs=scored)
        return ChatCompletionChunk(**completion, choices=[choice]).event()

    for index in range(count):
        yield chunk(index, Delta(role="assistant", content=""))
    ends: list[ReplyEvent] = [ReplyEvent()] * count
    async with aclosing(events):
        async for index, event in events:
            if event.delta:
                yield chunk(index, Delta(content=event.delta), tokens=event.logprobs)
            if event.finish_reason == "error":
                yield f"data: {json.dumps(generation_error(event).body())}\n\n"
                yield "data: [DONE]\n\n"
                return
            if event.finish_reason:
                ends[index] = event
                yield chunk(index, Delta(), event.finish_reason, tokens=event.logprobs)
    usage = _usage(ends)
    count_tokens(usage.prompt_tokens, usage.completion_tokens)
    if include_usage:
        yield ChatCompletionChunk(**completion, choices=[], usage=usage).event()
    yield "data: [DONE]\n\n"
