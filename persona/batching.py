"""Replies for many clients at once: requests that arrive together are generated together, in one batch.

A :class:`ReplyBatcher` owns the model on one worker thread. :meth:`ReplyBatcher.submit` queues a
:class:`ReplyRequest` (a bounded queue: :class:`QueueFull` beyond it); the worker takes what has arrived
within ``batch_wait_s`` of the first request (at most ``max_batch_size``), groups requests that decode alike
(same settings, stop strings and seed), and runs each group as one left-padded batch through
:func:`persona.generation.generate_batch`, the path of persona-chat and persona-eval. Each request receives
its reply's text deltas and then its end (:class:`ReplyEvent`) through the callback it brought, so a
streamed reply streams while the batch generates.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass, field

import torch

from persona.data.layout import history_window
from persona.generation import DecodingArguments, generate_batch, prompt_inputs
from persona.loading import max_positions, uses_token_types
from persona.special_tokens import special_ids
from persona.streaming import BatchStreamer, ReplyStream

logger = logging.getLogger(__name__)


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

    def batch_key(self) -> tuple:
        """Requests with the same key can share a batch: the same decoding, stop strings and seed."""
        return (astuple(self.decoding), tuple(self.stop), self.seed)


class ReplyBatcher:
    """The model and its worker thread; ``max_batch_size`` 1 generates one request at a time."""

    def __init__(self, model, tokenizer, *, max_history: int, max_batch_size: int = 16, max_queue: int = 64, batch_wait_s: float = 0.01):
        self.model, self.tokenizer, self.max_history = model, tokenizer, max_history
        self.max_batch_size, self.batch_wait_s = max_batch_size, batch_wait_s
        self.pending: queue.Queue[ReplyRequest | None] = queue.Queue(maxsize=max_queue)
        self.eos = special_ids(tokenizer).eos
        self.positions = max_positions(model.config)
        self.token_types = uses_token_types(model.config)
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

    def _generate(self, group: list[ReplyRequest]) -> None:
        """One batch: prompts as persona-chat builds them, the replies streamed row by row."""
        decoding = group[0].decoding
        self.batch_sizes.append(len(group))
        try:
            prompts = [
                prompt_inputs(r.persona, history_window(r.history, self.max_history), self.tokenizer, self.positions, decoding.max_length) for r in group
            ]
            rows = [ReplyStream(self._decode, r.stop, lambda delta, r=r: r.deliver(ReplyEvent(delta=delta))) for r in group]
            if group[0].seed is not None:
                torch.manual_seed(group[0].seed)
            generate_batch(
                self.model, self.tokenizer, prompts, decoding.generation_config(self.tokenizer), token_types=self.token_types,
                streamer=BatchStreamer(rows, self.eos),
            )
        except Exception as error:  # a failed batch answers its requests with the error and the server goes on
            logger.exception("Generation failed for a batch of %d", len(group))
            for request in group:
                request.deliver(ReplyEvent(finish_reason="error", error=f"{type(error).__name__}: {error}"))
            return
        for request, prompt, row in zip(group, prompts, rows):
            request.deliver(ReplyEvent(finish_reason=row.finish_reason, prompt_tokens=len(prompt["input_ids"]), completion_tokens=len(row.tokens)))

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)
