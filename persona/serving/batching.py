"""Replies for many clients at once: requests that arrive together are generated together, in one batch.

A :class:`ReplyBatcher` owns the model on one worker thread. :meth:`ReplyBatcher.submit` queues a
:class:`ReplyRequest` (a bounded queue: :class:`QueueFull` beyond it); the worker takes what has arrived
within ``batch_wait_ms`` of the first request (at most ``max_batch_size``), groups requests that decode alike
(same settings, stop strings and seed), and runs each group as one left-padded batch through
:func:`persona.model.generation.generate_batch`, the path of persona-chat and persona-eval. Each request receives
its reply's text deltas and then its end (:class:`ReplyEvent`) through the callback it brought, so a
streamed reply streams while the batch generates and ends when its own row ends, not when the batch does;
:func:`reply_events` turns that into an async iterator for the API and the page. A row stops when its reply has
ended (``<eos>`` or a stop string) or its client has gone (a dropped stream), and the batch stops when no row needs
another token. Each prompt is built on its own: a request whose text cannot be encoded fails alone.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import astuple, dataclass, field

import torch

from persona.data.layout import history_window
from persona.model.generation import DecodingArguments, generate_batch, prompt_inputs
from persona.model.loading import LoadedModel
from persona.serving.streaming import BatchStreamer, ReplyStream, RowsDone

logger = logging.getLogger(__name__)
REPLY_TIMEOUT_S = 300  # a request that waited this long for its reply ends with an error


class QueueFull(Exception):
    """More requests are waiting than the batcher's queue holds."""


@dataclass
class ReplyEvent:
    """What a request receives: a ``delta`` of text, or its end (``finish_reason``: stop, length or error)."""

    delta: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class ReplyRequest:
    """One reply to generate: the persona, the conversation so far (oldest first, the partner last), how to
    decode it, and ``deliver``, called (from the worker thread) with each :class:`ReplyEvent`."""

    persona: list[str]
    history: list[str]
    decoding: DecodingArguments
    deliver: Callable[[ReplyEvent], None]
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    gone: threading.Event = field(default_factory=threading.Event)  # set when the client stops listening

    def batch_key(self) -> tuple:
        """Requests with the same key can share a batch: the same decoding, stop strings and seed."""
        return (astuple(self.decoding), tuple(self.stop), self.seed)


class ReplyBatcher:
    """The model and its worker thread; ``max_batch_size`` 1 generates one request at a time (the settings are
    persona-serve's, :class:`~persona.serving.server.ServeArguments`)."""

    def __init__(
        self, loaded: LoadedModel, *, max_history: int, max_batch_size: int, max_queue: int, batch_wait_ms: float
    ):
        self.loaded, self.max_history = loaded, max_history
        self.max_batch_size, self.batch_wait_s = max_batch_size, batch_wait_ms / 1000
        self.pending: queue.Queue[ReplyRequest | None] = queue.Queue(maxsize=max_queue)
        self.batch_sizes: list[int] = []  # of every batch generated so far, for tests and benchmarks
        self.worker = threading.Thread(target=self._work, name="persona-batcher", daemon=True)
        self.worker.start()

    def submit(self, request: ReplyRequest) -> None:
        """Queue ``request``; :class:`QueueFull` when the queue is full."""
        try:
            self.pending.put_nowait(request)
        except queue.Full:
            raise QueueFull(f"{self.pending.maxsize} requests are already waiting") from None

    def close(self) -> None:
        """Stop the worker once the requests already queued are answered."""
        self.pending.put(None)
        self.worker.join(timeout=60)

    def _collect(self, first: ReplyRequest) -> tuple[list[ReplyRequest], bool]:
        """``first`` and what arrives within the wait (up to the batch size); whether the batcher was closed."""
        batch, deadline = [first], time.monotonic() + self.batch_wait_s
        while len(batch) < self.max_batch_size:
            try:
                request = self.pending.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if request is None:
                return batch, True
            batch.append(request)
        return batch, False

    def _work(self) -> None:
        closed = False
        while not closed:
            first = self.pending.get()
            if first is None:
                return
            batch, closed = self._collect(first)
            groups: dict[tuple, list[ReplyRequest]] = {}
            for request in batch:
                groups.setdefault(request.batch_key(), []).append(request)
            for group in groups.values():
                self._generate(group)

    def _prompts(self, group: list[ReplyRequest]) -> tuple[list[ReplyRequest], list[dict]]:
        """The requests whose prompt could be built (as persona-chat builds it) and their prompts; each other request
        is answered with its own error."""
        kept, prompts = [], []
        for request in group:
            if request.gone.is_set():  # its client left while it waited
                continue
            try:
                window = history_window(request.history, self.max_history)
                prompts.append(prompt_inputs(request.persona, window, self.loaded, request.decoding.max_length))
                kept.append(request)
            except Exception as error:  # text the tokenizer cannot encode: this request fails, not its batch
                logger.warning("A request's prompt could not be built: %s: %s", type(error).__name__, error)
                request.deliver(ReplyEvent(finish_reason="error", error=f"{type(error).__name__}: {error}"))
        return kept, prompts

    def _generate(self, group: list[ReplyRequest]) -> None:
        """One batch: prompts as persona-chat builds them, the replies streamed row by row, each answered at its own
        end; rows whose client has gone stop taking part."""
        self.batch_sizes.append(len(group))
        group, prompts = self._prompts(group)
        if not group:
            return
        rows = [self._row(request, len(prompt["input_ids"])) for request, prompt in zip(group, prompts)]
        try:
            if group[0].seed is not None:
                torch.manual_seed(group[0].seed)
            generate_batch(
                self.loaded,
                prompts,
                group[0].decoding,
                streamer=BatchStreamer(rows, self.loaded.ids.eos),
                stopping_criteria=RowsDone(rows, [request.gone.is_set for request in group]),
            )
        except Exception as error:  # a failed batch answers its unanswered requests with the error; the server goes on
            logger.exception("Generation failed for a batch of %d", len(group))
            for request, row in zip(group, rows):
                if row.finish_reason is None:
                    request.deliver(ReplyEvent(finish_reason="error", error=f"{type(error).__name__}: {error}"))

    def _row(self, request: ReplyRequest, prompt_tokens: int) -> ReplyStream:
        """The stream of one request's reply: its deltas as they come, its end (with its token counts) when its row
        ends."""

        def ended(row: ReplyStream) -> None:
            request.deliver(
                ReplyEvent(
                    finish_reason=row.finish_reason, prompt_tokens=prompt_tokens, completion_tokens=len(row.tokens)
                )
            )

        return ReplyStream(self._decode, request.stop, lambda delta: request.deliver(ReplyEvent(delta=delta)), ended)

    def _decode(self, tokens: list[int]) -> str:
        return self.loaded.tokenizer.decode(tokens, skip_special_tokens=True)


async def reply_events(
    batcher: ReplyBatcher,
    persona: list[str],
    history: list[str],
    decoding: DecodingArguments,
    *,
    stop: list[str] = (),
    seed: int | None = None,
) -> AsyncIterator[ReplyEvent]:
    """Submit a request (:class:`QueueFull` at once when the queue is full) and yield its events as they come, its
    end last."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[ReplyEvent] = asyncio.Queue()
    deliver = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)  # noqa: E731 (called from the worker)
    request = ReplyRequest(persona, history, decoding, deliver, stop=list(stop), seed=seed)
    batcher.submit(request)
    deadline = loop.time() + REPLY_TIMEOUT_S
    try:
        while True:
            event = await asyncio.wait_for(events.get(), timeout=max(deadline - loop.time(), 0))
            yield event
            if event.finish_reason:
                return
    finally:
        request.gone.set()  # after the end a no-op; before it (a client that disconnected, a time-out) its row stops
