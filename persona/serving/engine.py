"""What persona-serve's API and page ask of whatever decodes the replies: an :class:`Engine`.

Two engines implement it: persona's own :class:`~persona.serving.batching.ReplyBatcher` (the model in this process,
one running batch; the only one for models that read token types or rerank with their head) and
:class:`~persona.serving.remote_engine.RemoteEngine` (an OpenAI-compatible server that decodes: llama.cpp's
``llama-server`` on a file from ``persona-export``, vLLM, TGI, Ollama). The persona layer stays in persona-serve
either way: the page, the default persona, the history window, the key, CORS, the limits and ``/metrics``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Protocol

from persona.model.generation import DecodingArguments
from persona.serving.batching import ReplyEvent


class Engine(Protocol):
    """The replies of a persona-serve, however they are decoded.

    ``max_history``: the exchanges a conversation keeps (the reference's ``max_history``); ``max_batch_size``: how
    many replies are decoded at once (the page's concurrency); ``queue_limit``: how many more may wait (0: any);
    ``on_step``: called with the rows of each decoding step where the engine has steps of its own (the metrics')."""

    max_history: int
    max_batch_size: int
    queue_limit: int
    on_step: Callable[[int], None]

    def alive(self) -> bool:
        """Whether the engine can still answer (False: the process should exit, for a supervisor to restart it)."""

    async def unready(self) -> str | None:
        """Why the engine cannot answer now (``/health`` answers 503 with it), or None when it can."""

    def queue_depth(self) -> int:
        """How many replies wait for the engine now."""

    def check_context(self, persona: list[str], history: list[str], reply_budget: int) -> None:
        """A :class:`~persona.serving.context.ContextTooLong` when the persona and the last utterance of ``history``
        with a reply of ``reply_budget`` tokens cannot fit (nothing where the engine has no tokenizer here: it then
        answers an over-long request with its own 400); a :class:`~persona.serving.context.ControlTextRefused` for a
        message whose text the engine would read as a control token (an engine that renders the chat itself)."""

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
        """One reply per seed, queued together, all or none
        (:class:`~persona.serving.batching.QueueFull`, :class:`~persona.serving.batching.QueueTooSmall`,
        :class:`~persona.serving.batching.WorkerStopped`), each as its events as they come, its end last. Call it
        inside the event loop that reads them."""

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop, once the replies in flight are answered (at most ``timeout_s`` seconds)."""


async def reply_events(
    engine: Engine,
    persona: list[str],
    history: list[str],
    decoding: DecodingArguments,
    *,
    stop: list[str] = (),
    seed: int | None = None,
) -> AsyncIterator[ReplyEvent]:
    """One reply's events as they come, its end last (:class:`~persona.serving.batching.QueueFull` at once when the
    engine's queue is full)."""
    (events,) = engine.replies(
        persona, history, decoding, seeds=[seed], stop=list(stop), top_logprobs=None, request_id=None
    )
    async with aclosing(events):
        async for event in events:
            yield event
