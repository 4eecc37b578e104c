"""persona-serve in front of an OpenAI-compatible engine (``--engine_url``): llama.cpp's ``llama-server`` on a file
from ``persona-export``, vLLM, TGI, Ollama, or another persona-serve.

persona keeps its part: the page, the default persona, the history window, the key, CORS, the limits and
``/metrics``; the engine decodes. Each reply is one streamed ``/v1/chat/completions`` request to the engine: the
persona as the system message, the window of the conversation as alternating user and assistant messages (as
persona's chat-template layout renders a turn, :func:`~persona.data.conversation.conversation_messages`), and the
decoding settings translated by :func:`engine_request`. The engine's chunks come back as
:class:`~persona.serving.engine.ReplyEvent`\\ s, with the reply's leading and trailing white space held back as
persona's own engine holds it; the engine's refusals keep their meaning: its 400 (a context too long for it, a bad
value) is the client's 400, its 429 or 503 a 429 or 503, anything else (a key it refused, a crash, no answer, a chunk
that is not a JSON object) a 502. What clients are told never holds the engine's address (which may carry
credentials): the log does. The engine renders the chat itself, so a message holding a control token's text is
refused before it goes out (:meth:`RemoteEngine.check_context`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable

import httpx

from persona.data.chat_render import control_texts
from persona.data.conversation import conversation_messages
from persona.data.layout import history_window
from persona.errors import ConfigError
from persona.model.generation import GREEDY_BELOW, DecodingArguments
from persona.model.loading import LoadedModel
from persona.serving.context import ControlTextRefused, check_context
from persona.serving.engine import (
    OWN_ENGINE_ONLY,
    REPLY_TIMEOUT_S,
    QueueFull,
    QueueTooSmall,
    ReplyEvent,
    Unsupported,
    held_back,
    own_engine_only,
)

logger = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 10.0
ERROR_BODY_BYTES = 16_384  # what is read of an engine's error answer: its message, not whatever else it sends
KNOWN_CONTROL_TEXTS = (  # the control tokens of the chat templates engines serve most (ChatML, Llama 3, Gemma...)
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "[INST]",
    "[/INST]",
    "<s>",
    "</s>",
)


def engine_base(url: str) -> str:
    """The engine's base URL without a trailing ``/`` or ``/v1`` (``http://127.0.0.1:8080/v1/`` and
    ``http://127.0.0.1:8080`` name the same engine)."""
    base = url.strip().rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def _bearer(api_key: str | None) -> dict[str, str]:
    """The engine's authorization header (none without a key)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def engine_request(
    persona: list[str],
    history: list[str],
    decoding: DecodingArguments,
    *,
    model: str,
    seed: int | None = None,
    stop: list[str] = (),
    top_logprobs: int | None = None,
) -> dict:
    """The engine's streamed chat-completions request for one reply.

    The decoding settings mean what they mean in persona's own engine: greedy (``do_sample`` false or a temperature
    below :data:`~persona.model.generation.GREEDY_BELOW`) is temperature 0; sampling sends ``temperature``, ``top_p``
    and ``top_k`` (0: no limit) with ``min_p`` 0, so that an engine's own defaults (llama.cpp's top-k 40 and min-p
    0.05) do not change the reference's sampling; ``repetition_penalty`` goes under vLLM's name and llama.cpp's
    (``repeat_penalty``); ``min_length`` above 1 as ``min_tokens``."""
    body = {
        "model": model,
        "messages": conversation_messages(persona, history),
        "max_tokens": decoding.max_length,
        "stream": True,
        "stream_options": {"include_usage": True},
        "repetition_penalty": decoding.repetition_penalty,
        "repeat_penalty": decoding.repetition_penalty,
    }
    if decoding.do_sample and decoding.temperature >= GREEDY_BELOW:
        body |= {"temperature": decoding.temperature, "top_p": decoding.top_p, "top_k": decoding.top_k, "min_p": 0.0}
    else:
        body["temperature"] = 0.0
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(decoding, name):
            body[name] = getattr(decoding, name)
    if decoding.min_length > 1:
        body["min_tokens"] = decoding.min_length
    if seed is not None:
        body["seed"] = seed
    if stop:
        body["stop"] = list(stop)
    if top_logprobs is not None:
        body |= {"logprobs": True, "top_logprobs": top_logprobs}
    return body


def engine_refusal(url: str, status: int, body: bytes) -> ReplyEvent:
    """The end of a reply the engine answered with an error ``status``: its meaning kept for the client (400 for a
    request the engine cannot take, with the engine's code, a string whatever its type, or ``context_length_exceeded``
    when its message says so; 429 busy, 503 not ready), else a 502 (the engine's ``url`` in the log only)."""
    try:
        error = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        error = body.decode("utf-8", "replace")
    text = error.get("message", error) if isinstance(error, dict) else error
    message = str(text).strip()[:300] or f"HTTP {status}"
    if status in (400, 413, 422):
        told = error.get("code") if isinstance(error, dict) else None
        if isinstance(told, int) or (isinstance(told, str) and told.isdigit()):
            told = None  # llama.cpp's numeric code repeats the status: the message says more
        told = str(told)[:64] if told else None
        code = told or ("context_length_exceeded" if "context" in message.lower() else "engine_refused")
        return ReplyEvent(
            finish_reason="error", error=f"the engine refused the request: {message}", status=400, code=code
        )
    if status in (429, 503):
        code = "engine_busy" if status == 429 else "engine_unavailable"
        return ReplyEvent(finish_reason="error", error=f"the engine is busy: {message}", status=status, code=code)
    logger.warning("The engine at %s answered %d: %s", url, status, message)
    return ReplyEvent(
        finish_reason="error", error=f"the engine answered {status}: {message}", status=502, code="engine_error"
    )


class _EngineReply:
    """The text of one streamed reply, sent as persona's engine sends it: no leading white space, trailing white
    space held back until more text follows, each token's log-probabilities with the delta that carries them."""

    def __init__(self):
        self.text, self.sent, self.pending = "", "", []
        self.chunks = 0

    def add(self, piece: str, logprobs: list[dict]) -> ReplyEvent | None:
        """The delta that ``piece`` (with its tokens' ``logprobs``) makes sendable, or None while it is held back."""
        self.chunks += 1
        self.text += piece
        self.pending += logprobs
        visible = self.text.lstrip()
        return self._delta(visible[: len(visible) - held_back(visible, [])])

    def end(self, finish_reason: str, usage: dict | None) -> list[ReplyEvent]:
        """The last delta (what was held back, less trailing white space) and the end, with the engine's usage (the
        chunks counted as tokens where it reports none)."""
        last = self._delta(self.text.strip())
        usage = usage or {}
        end = ReplyEvent(
            finish_reason=finish_reason,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or self.chunks),
            logprobs=self.pending,
        )
        return [last, end] if last else [end]

    def _delta(self, visible: str) -> ReplyEvent | None:
        if len(visible) <= len(self.sent):
            return None
        delta, self.sent = visible[len(self.sent) :], visible
        logprobs, self.pending = self.pending, []
        return ReplyEvent(delta=delta, logprobs=logprobs)


class RemoteEngine:
    """The :class:`~persona.serving.engine.Engine` of an OpenAI-compatible server at ``url`` serving ``model``.

    At most ``max_batch_size`` + ``max_queue`` replies are in flight at once (the engine queues what it cannot
    decode now; beyond that the API answers 429); ``api_key`` is the engine's own (sent as a Bearer token); ``front``,
    a model's tokenizer and config loaded without weights (:func:`~persona.model.loading.load_for_inference`), checks
    each conversation's length before it goes out (without one the engine answers an over-long one with its 400).
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        max_history: int,
        max_batch_size: int,
        max_queue: int,
        api_key: str | None = None,
        front: LoadedModel | None = None,
    ):
        self.url, self.model, self.front = engine_base(url), model, front
        self.max_history, self.max_batch_size, self.queue_limit = max_history, max_batch_size, max(max_queue, 0)
        self.headers = _bearer(api_key)
        self.on_step: Callable[[int], None] = lambda rows: None
        self.in_flight = 0
        self.client: httpx.AsyncClient | None = None
        self.client_loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    @classmethod
    def connect(cls, url: str, *, api_key: str | None = None, **options) -> RemoteEngine:
        """The engine at ``url``, its model read from its ``/v1/models`` (the first it lists); a
        :class:`~persona.errors.ConfigError` that says how to start one when nothing answers there."""
        base = engine_base(url)
        try:
            response = httpx.get(f"{base}/v1/models", headers=_bearer(api_key), timeout=CONNECT_TIMEOUT_S)
            response.raise_for_status()
            model = response.json()["data"][0]["id"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as error:
            raise ConfigError(
                f"no OpenAI-compatible engine answers {base}/v1/models ({type(error).__name__}: {error})",
                where="--engine_url",
                fix="start the engine first (for example: llama-server -m bot.gguf --jinja --port 8080, on a file "
                "from persona-export) and pass its address, or give its key with --engine_api_key.",
            ) from None
        logger.info("Decoding with %s at %s", model, base)
        return cls(base, model, api_key=api_key, **options)

    def alive(self) -> bool:
        """True until closed: an engine that stops answering makes each reply a 502, not this process exit."""
        return not self.closed

    async def unready(self) -> str | None:
        """Why the engine does not answer now (its ``/v1/models`` fails), or None."""
        try:
            response = await self._client().get("/v1/models", timeout=CONNECT_TIMEOUT_S)
            response.raise_for_status()
        except httpx.HTTPError as error:
            logger.warning("The engine at %s does not answer: %s", self.url, error)
            return f"the engine does not answer ({type(error).__name__})"
        return None

    def queue_depth(self) -> int:
        """The replies in flight beyond those the engine decodes at once."""
        return max(self.in_flight - self.max_batch_size, 0)

    def check_context(self, persona: list[str], history: list[str], reply_budget: int) -> None:
        """A :class:`~persona.serving.context.ControlTextRefused` for a message holding a control token's text (the
        engine renders the chat itself and would read it as the token: :data:`KNOWN_CONTROL_TEXTS` and ``front``'s
        own), then the length check on ``front`` when there is one (see :class:`RemoteEngine`)."""
        controls = KNOWN_CONTROL_TEXTS + (control_texts(self.front.tokenizer) if self.front is not None else ())
        for message in conversation_messages(persona, history):
            control = next((c for c in controls if c in message["content"]), None)
            if control is not None:
                raise ControlTextRefused(message["role"], control)
        if self.front is not None:
            check_context(self.front, persona, history, reply_budget)

    def replies(
        self,
        persona: list[str],
        history: list[str],
        decoding: DecodingArguments,
        *,
        seeds: list[int | None],
        stop: list[str],
        top_logprobs: int | None,
        request_id: str | None,
    ) -> list[AsyncIterator[ReplyEvent]]:
        """One streamed engine request per seed (see :class:`~persona.serving.engine.Engine`); an
        :class:`~persona.serving.engine.Unsupported` for a setting that an engine's API does not take
        (:data:`~persona.serving.engine.OWN_ENGINE_ONLY`)."""
        unsupported = own_engine_only(decoding)
        if unsupported:
            raise Unsupported(
                unsupported,
                f"{unsupported} needs persona's own engine ({OWN_ENGINE_ONLY[unsupported]}); the engine behind this "
                f"server decodes alone: drop {unsupported}",
            )
        limit = self.max_batch_size + self.queue_limit if self.queue_limit else 0
        if limit and len(seeds) > limit:
            raise QueueTooSmall(len(seeds), limit)
        if limit and self.in_flight + len(seeds) > limit:
            raise QueueFull(f"{self.in_flight} of {limit} replies in flight, {len(seeds)} asked for")
        window = history_window(history, self.max_history)
        self.in_flight += len(seeds)
        return [
            self._reply(
                engine_request(
                    persona, window, decoding, model=self.model, seed=seed, stop=stop, top_logprobs=top_logprobs
                ),
                request_id,
            )
            for seed in seeds
        ]

    def close(self, timeout_s: float = 60.0) -> None:
        """Take no more replies (the event loop closes the connections with itself)."""
        self.closed = True

    def _client(self) -> httpx.AsyncClient:
        """The connection pool of the running event loop (the server's; one of its own for any other loop)."""
        loop = asyncio.get_running_loop()
        if self.client is None or self.client_loop is not loop:
            timeout = httpx.Timeout(REPLY_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
            self.client = httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=timeout)
            self.client_loop = loop
        return self.client

    async def _reply(self, body: dict, request_id: str | None) -> AsyncIterator[ReplyEvent]:
        """The events of one engine request; its end last (an error event when the engine failed)."""
        reply, finish_reason, usage = _EngineReply(), None, None
        try:
            async with self._client().stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    yield engine_refusal(self.url, response.status_code, await _bounded_body(response))
                    return
                async for chunk in _chunks(response):
                    if "error" in chunk:
                        yield engine_refusal(self.url, 502, json.dumps(chunk).encode())
                        return
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        delta = (choice.get("delta") or {}).get("content") or ""
                        logprobs = (choice.get("logprobs") or {}).get("content") or []
                        finish_reason = choice.get("finish_reason") or finish_reason
                        event = reply.add(delta, logprobs)
                        if event is not None:
                            yield event
            for event in reply.end(finish_reason or "stop", usage):
                yield event
        except (httpx.HTTPError, AttributeError, TypeError) as error:  # no answer, or chunks not shaped as chunks
            logger.warning("Request %s: the engine at %s failed: %r", request_id, self.url, error)
            failure = type(error).__name__ if isinstance(error, httpx.HTTPError) else "a malformed chunk"
            message = f"the engine failed ({failure})"
            yield ReplyEvent(finish_reason="error", error=message, status=502, code="engine_error")
        finally:
            self.in_flight -= 1


async def _bounded_body(response: httpx.Response) -> bytes:
    """The first :data:`ERROR_BODY_BYTES` of an answer's body (the rest is left unread)."""
    body = b""
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) >= ERROR_BODY_BYTES:
            break
    return body[:ERROR_BODY_BYTES]


async def _chunks(response: httpx.Response) -> AsyncIterator[dict]:
    """The JSON objects of a server-sent event stream, up to ``data: [DONE]``; anything else sent as a chunk is logged
    and skipped."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            chunk = None
        if isinstance(chunk, dict):
            yield chunk
        else:
            logger.warning("The engine sent a chunk that is not a JSON object: %.200s", data)
