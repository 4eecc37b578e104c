"""What persona-serve's API and page ask of whatever decodes the replies: an :class:`Engine`.

Two engines implement it: persona's own :class:`~persona.serving.batching.ReplyBatcher` (the model in this process,
one running batch; the only one for models that read token types or rerank with their head) and
:class:`~persona.serving.remote_engine.RemoteEngine` (an OpenAI-compatible server that decodes: llama.cpp's
``llama-server`` on a file from ``persona-export``, vLLM, TGI, Ollama). The persona layer stays in persona-serve
either way: the page, the default persona, the history window, the key, CORS, the limits and ``/metrics``.

The contract's types live here, beside the protocol, so that neither engine imports the other: the events a reply
is made of (:class:`ReplyEvent`), the refusals (:class:`QueueFull`, :class:`QueueTooSmall`, :class:`WorkerStopped`,
:class:`Unsupported`),
the seed of each of a request's choices (:func:`choice_seed`) and the rule of what streamed text is final
(:func:`held_back`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from persona.model.generation import DecodingArguments

REPLY_TIMEOUT_S = 300  # a request that waited this long for its reply ends with an error


class QueueFull(Exception):
    """More replies are waiting than the engine's queue holds."""


class WorkerStopped(Exception):
    """The decoding worker (or the engine) has ended: nothing queued now would be answered."""


class QueueTooSmall(Exception):
    """More replies at once than the engine's queue could ever hold (its ``limit``): waiting does not help."""

    def __init__(self, asked: int, limit: int):
        super().__init__(f"{asked} replies asked for at once, but the queue holds at most {limit}")
        self.asked, self.limit = asked, limit


class Unsupported(Exception):
    """A decoding setting the engine cannot apply (``field`` names it; the message says why and what to do)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


OWN_ENGINE_ONLY = {  # decoding settings an OpenAI-compatible engine's API cannot carry, and why
    "persona_weight": "a second row without the persona, fed each token",
    "rerank_samples": "the samples scored by persona's multiple-choice head",
}


def own_engine_only(decoding: DecodingArguments) -> str | None:
    """The first setting of ``decoding`` in use that only persona's own engine decodes (:data:`OWN_ENGINE_ONLY`), or
    None."""
    used = {"persona_weight": decoding.persona_weight > 0, "rerank_samples": decoding.samples > 1}
    return next((name for name in OWN_ENGINE_ONLY if used[name]), None)


@dataclass
class ReplyEvent:
    """What a request receives: a ``delta`` of text (with the log-probabilities of the tokens it completes, when
    asked for), or its end (``finish_reason``: stop, length or error). An error's ``status`` is 400 when the request
    caused it (its ``error`` says how), 503 when the decoding worker stopped, 500 otherwise (its ``error`` names the
    request id the log has); its ``code`` names the error in the API's answer. ``logprobs`` are the delta's tokens in
    OpenAI's ``logprobs.content`` shape."""

    delta: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    status: int = 200
    code: str | None = None  # the error's code in the API's answer
    logprobs: list[dict] = field(default_factory=list)  # OpenAI's logprobs.content entries of the delta's tokens


def choice_seed(seed: int | None, index: int) -> int | None:
    """The seed of choice ``index`` of a request seeded with ``seed``: the seed itself for the first, one derived
    from both for the others (so that ``n`` choices are ``n`` draws, the same ones for the same seed)."""
    if seed is None or index == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**64, index]).generate_state(1, np.uint64)[0])


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` may still change: a half-decoded character, white space, or the
    longest ending that starts a stop string."""
    keep = len(text) - len(text.rstrip())
    if text.endswith("\ufffd"):
        keep = max(keep, 1)
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                keep = max(keep, size)
                break
    return keep


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
        (:class:`QueueFull`, :class:`QueueTooSmall`, :class:`WorkerStopped`), each as its events as they come, its end
        last. Call it
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
    """One reply's events as they come, its end last (:class:`QueueFull` at once when the
    engine's queue is full)."""
    (events,) = engine.replies(
        persona, history, decoding, seeds=[seed], stop=list(stop), top_logprobs=None, request_id=None
    )
    async with aclosing(events):
        async for event in events:
            yield event
