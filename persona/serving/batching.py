"""Replies for many clients at once, decoded as one running batch that requests join and leave between steps.

A :class:`ReplyBatcher` owns the model on one worker thread. :meth:`ReplyBatcher.submit` queues a
:class:`ReplyRequest` (a bounded queue: :class:`QueueFull` beyond it). While rows are decoding, the requests that
have arrived join the running batch before the next step, up to ``max_batch_size`` rows
(:class:`~persona.model.persona_guidance.GuidedBatch`: a running batch, and for a request with a persona weight
its pair without the persona); an idle batcher waits ``batch_wait_ms`` after a first request for others to start
with it. Each row decodes with its own settings, seed and stop strings
(:class:`~persona.model.row_decoding.RowDecoder`, the same token choice as persona-chat's loop,
:mod:`~persona.model.decoding`), from the prompt persona-chat builds
(:func:`~persona.model.generation.prompt_inputs`), reading only what it adds to a prompt read before (the
batcher's :class:`~persona.model.prefix_cache.PrefixCache`). Each request receives its reply's text deltas and then
its end (:class:`ReplyEvent`) through the callback it brought, the moment its row ends (``<eos>``, a stop string,
its token budget); a row whose client has gone (a dropped stream) leaves the batch at the next step;
:func:`reply_streams` turns the callbacks into async iterators (the ``n`` choices of a request queued
together, all or none; a reranked request as its samples, :mod:`~persona.serving.reranking`): the batcher is
persona-serve's own :class:`~persona.serving.engine.Engine`. Each prompt is built on its own: a request whose text
cannot be encoded fails alone.

The worker's loop does not die of a request. An exception raised while a row is started or its token chosen fails
that row alone (:class:`ReplyEvent` ``status`` 400 when the request's own text caused it, 500 otherwise, logged with
the traceback under the request's id); one that cannot be pinned on a row (a failed decoding step) fails the rows of
that step, and the loop goes on with an empty batch. Should the worker still end while the server runs,
:meth:`ReplyBatcher.alive` says so (the server's ``/health`` answers 503 and persona-serve exits non-zero), and the
requests it held are answered with an error.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import torch

from persona.data.layout import history_window
from persona.data.tokenize import InvalidText
from persona.model.generation import DecodingArguments, prompt_inputs
from persona.model.loading import LoadedModel
from persona.model.persona_guidance import GuidedBatch
from persona.model.prefix_cache import PrefixCache
from persona.model.row_decoding import Choice, RowDecoder, TokenLogprob, choose_tokens
from persona.model.scoring import best_reply
from persona.serving.context import check_context
from persona.serving.engine import (
    REPLY_TIMEOUT_S,
    QueueFull,
    QueueTooSmall,
    ReplyEvent,
    Unsupported,
    WorkerStopped,
)
from persona.serving.logprobs import TokenTexts
from persona.serving.reranking import SampleGroup
from persona.serving.streaming import ReplyStream

logger = logging.getLogger(__name__)


def error_event(error: BaseException, request_id: str, during: str) -> ReplyEvent:
    """The end of a reply that ``error`` stopped ``during`` a stage of its decoding: a 400 that says what is wrong
    with the request's text, or a 500 that names ``request_id``, logged with the traceback under that id."""
    if isinstance(error, InvalidText):
        logger.warning("Request %s could not start: %s", request_id, error)
        return ReplyEvent(finish_reason="error", error=str(error), status=400, code="invalid_text")
    if isinstance(error, WorkerStopped):
        return ReplyEvent(finish_reason="error", error=str(error), status=503, code="worker_stopped")
    logger.error("Request %s failed %s", request_id, during, exc_info=error)
    message = f"generation failed ({type(error).__name__}); the server's log has the details under {request_id}"
    return ReplyEvent(finish_reason="error", error=message, status=500, code="generation_failed")


@dataclass
class ReplyRequest:
    """One reply to generate: the persona, the conversation so far (oldest first, the partner last), how to
    decode it, and ``deliver``, called (from the worker thread) with each :class:`ReplyEvent`; ``top_logprobs``
    (0 or more) asks for each token's log-probability and that many alternatives; ``on_reply``, when given, is called
    with the prompt's and the reply's token ids as the reply ends, before its end is delivered."""

    persona: list[str]
    history: list[str]
    decoding: DecodingArguments
    deliver: Callable[[ReplyEvent], None]
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    top_logprobs: int | None = None
    gone: threading.Event = field(default_factory=threading.Event)  # set when the client stops listening
    request_id: str = field(default_factory=lambda: f"req-{uuid.uuid4().hex}")  # names it in the log and errors
    on_reply: Callable[[list[int], list[int]], None] | None = None  # given the prompt's and reply's ids at its end

    def fail(self, error: BaseException, during: str) -> None:
        """End the request with ``error`` (see :func:`error_event`)."""
        self.deliver(error_event(error, self.request_id, during))


class _Row:
    """A request being decoded: its stream (whose deltas and end go to the request with the log-probabilities
    gathered since the last event, in OpenAI's shape by ``texts``), its token choice, and the token it feeds next."""

    def __init__(self, request: ReplyRequest, decoder: RowDecoder, prompt_ids: list[int], texts: TokenTexts):
        self.request, self.decoder, self.prompt_ids, self.texts = request, decoder, prompt_ids, texts
        self.stream = ReplyStream(texts.decode, request.stop, self._send, self._ended)
        self.next_token = -1
        self.logprobs: list[TokenLogprob] = []

    def take(self, token: int, logprob: TokenLogprob | None, eos: int) -> None:
        """Hand the row's next token to its stream (which may end the row)."""
        self.next_token = token
        if logprob is not None and token != eos:
            self.logprobs.append(logprob)
        self.stream.add(token, eos)
        if self.stream.finish_reason is None and len(self.stream.tokens) >= self.request.decoding.max_length:
            self.stream.close("length")

    def fail(self, error: BaseException, during: str) -> None:
        """End the row with ``error`` (unless it has ended)."""
        if self.stream.finish_reason is None:
            self.stream.abandon()
            self.request.fail(error, during)

    def _taken_logprobs(self) -> list[dict]:
        taken, self.logprobs = self.logprobs, []
        return self.texts.content(taken) if taken else []

    def _send(self, delta: str) -> None:
        self.request.deliver(ReplyEvent(delta=delta, logprobs=self._taken_logprobs()))

    def _ended(self, stream: ReplyStream) -> None:
        if self.request.on_reply is not None:
            self.request.on_reply(self.prompt_ids, list(stream.tokens))
        self.request.deliver(
            ReplyEvent(
                finish_reason=stream.finish_reason,
                prompt_tokens=len(self.prompt_ids),
                completion_tokens=len(stream.tokens),
                logprobs=self._taken_logprobs(),
            )
        )


class ReplyBatcher:
    """The model and its worker thread; ``max_batch_size`` 1 generates one request at a time (the settings are
    persona-serve's, :class:`~persona.serving.server.ServeArguments`). The worker alone uses ``loaded``; the event
    loop's checks use ``front``, the same model facts with a tokenizer of their own (a fast tokenizer is not safe to
    use from two threads: each call may change its settings while the other encodes); ``on_step`` (the server's
    metrics set it) is called with the batch's row count at each decoding step. ``prefix_cache_bytes`` (0: none)
    keeps the keys and values of the prompts read, for later prompts that start as they do
    (:class:`~persona.model.prefix_cache.PrefixCache`)."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_history: int,
        max_batch_size: int,
        max_queue: int,
        batch_wait_ms: float,
        prefix_cache_bytes: int = 0,
    ):
        self.loaded, self.max_history = loaded, max_history
        self.prefixes = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        tokenizer = copy.deepcopy(loaded.tokenizer)
        self.front = replace(loaded, tokenizer=tokenizer, layout=loaded.layout.with_tokenizer(tokenizer))
        self.texts = TokenTexts(loaded.tokenizer)  # the worker's: replies and their log-probabilities as text
        self.on_step: Callable[[int], None] = lambda rows: None
        self.max_batch_size, self.batch_wait_s = max_batch_size, batch_wait_ms / 1000
        self.pending: queue.Queue[ReplyRequest | None] = queue.Queue(maxsize=max_queue)
        self._submitting = threading.Lock()
        self._closing = threading.Event()
        self.worker = threading.Thread(target=self._work, name="persona-batcher", daemon=True)
        self.worker.start()

    def submit(self, *requests: ReplyRequest) -> None:
        """Queue ``requests`` together: all of them, or none and :class:`QueueFull` when the queue has not room for
        all now (the worker only ever makes room), :class:`QueueTooSmall` when it never will, :class:`WorkerStopped`
        when the worker has ended."""
        if not self.alive():
            raise WorkerStopped("the decoding worker has stopped; the server is exiting")
        limit = self.pending.maxsize  # 0 or less: any number
        if 0 < limit < len(requests):
            raise QueueTooSmall(len(requests), limit)
        with self._submitting:
            waiting = self.pending.qsize()
            if 0 < limit < waiting + len(requests):
                raise QueueFull(f"{waiting} of {limit} places taken, {len(requests)} asked for")
            for request in requests:
                self.pending.put_nowait(request)

    def rank(self, prompt_ids: list[int], replies: list[list[int]]) -> int:
        """The reply the multiple-choice head ranks first among ``replies`` to ``prompt_ids`` (on the worker)."""
        return best_reply(self.loaded, prompt_ids, replies)

    def alive(self) -> bool:
        """Whether the worker is decoding or waiting for requests (False once it has ended, closed or not)."""
        return self.worker.is_alive()

    async def unready(self) -> str | None:
        """Why no reply would come now (the worker has ended), or None."""
        return None if self.alive() else "the decoding worker has stopped"

    @property
    def queue_limit(self) -> int:
        """The most replies waiting to join the batch (0: any number)."""
        return max(self.pending.maxsize, 0)

    def queue_depth(self) -> int:
        """How many replies wait to join the batch."""
        return self.pending.qsize()

    def check_context(self, persona: list[str], history: list[str], reply_budget: int) -> None:
        """:func:`~persona.serving.context.check_context` on the event loop's tokenizer (:attr:`front`)."""
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
        """:func:`reply_streams` of this batcher (the :class:`~persona.serving.engine.Engine` method)."""
        return reply_streams(
            self, persona, history, decoding, seeds=seeds, stop=stop, top_logprobs=top_logprobs, request_id=request_id
        )

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop the worker once it has answered the requests already queued, waiting at most ``timeout_s`` seconds
        (a worker still busy then is a daemon thread: it does not keep the process alive)."""
        try:
            self.pending.put_nowait(None)
        except queue.Full:  # the worker is not idle: it reads the requests, then the closing flag
            pass
        self._closing.set()
        self.worker.join(timeout=timeout_s)

    def _arrivals(self, running: int) -> tuple[list[ReplyRequest], bool]:
        """The requests that join now (up to the free rows) and whether the batcher was closed: with rows running,
        those already waiting; idle, the next request and those arriving within the wait."""
        arrived: list[ReplyRequest] = []
        deadline = None
        while running + len(arrived) < self.max_batch_size:
            try:
                if running:
                    request = self.pending.get_nowait()
                elif not arrived:
                    request = self.pending.get()
                    deadline = time.monotonic() + self.batch_wait_s
                else:
                    request = self.pending.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if request is None:
                return arrived, True
            arrived.append(request)
        return arrived, self._closing.is_set() and self.pending.empty()

    def _work(self) -> None:
        """The worker's loop, in inference mode: none of the autograd bookkeeping (version counters, view tracking)
        that ``no_grad`` alone still does for every tensor it makes."""
        with torch.inference_mode():
            self._decode_until_closed()

    def _decode_until_closed(self) -> None:
        batch, rows, arrived, closed = GuidedBatch(self.loaded, self.prefixes), [], [], False
        try:
            while rows or not closed:
                try:
                    if not closed:
                        arrived, closed = self._arrivals(len(rows))
                        rows += self._join(batch, arrived)
                        arrived = []
                    if rows:
                        rows = self._step(batch, rows)
                except Exception as error:  # not pinned on one row: the rows of this step fail, the loop goes on
                    logger.exception(
                        "The decoding loop failed with %d rows; it goes on empty", len(rows) + len(arrived)
                    )
                    self._fail_all(rows, arrived, error, "in the running batch")
                    batch, rows, arrived = GuidedBatch(self.loaded, self.prefixes), [], []
        except BaseException as error:
            logger.critical("The decoding worker stopped: %s", error, exc_info=error)
            stopped = WorkerStopped("the decoding worker has stopped; the server is exiting")
            self._fail_all(rows, arrived, stopped, "when the decoding worker stopped")
            self._answer_queued(stopped)

    @staticmethod
    def _fail_all(rows: list[_Row], arrived: list[ReplyRequest], error: BaseException, during: str) -> None:
        """End the running ``rows`` and the requests that ``arrived`` without becoming rows with ``error``."""
        for row in rows:
            row.fail(error, during)
        for request in arrived:
            request.fail(error, during)

    def _answer_queued(self, error: Exception) -> None:
        """Answer the requests still queued with ``error`` (the worker is ending)."""
        while True:
            try:
                request = self.pending.get_nowait()
            except queue.Empty:
                return
            if request is not None:
                request.fail(error, "when the decoding worker stopped")

    def _join(self, batch: GuidedBatch, arrived: list[ReplyRequest]) -> list[_Row]:
        """Start the rows of the requests that arrived (those whose prompt could be built) with their first token;
        a request with a persona weight brings its prompt without the persona too."""
        joining, prompts, unconditional = [], [], []
        for request in arrived:
            if request.gone.is_set():  # its client left while it waited
                continue
            try:
                window = history_window(request.history, self.max_history)
                prompt = prompt_inputs(request.persona, window, self.loaded, request.decoding.max_length)
                alone = None
                if request.decoding.persona_weight:
                    alone = prompt_inputs([], window, self.loaded, request.decoding.max_length)
                decoder = RowDecoder(
                    request.decoding,
                    self.loaded,
                    prompt["input_ids"],
                    seed=request.seed,
                    top_logprobs=request.top_logprobs,
                )
            except Exception as error:  # text the tokenizer cannot encode: this request fails, not the batch
                request.fail(error, "building its prompt")
                continue
            prompts.append(prompt)
            unconditional.append(alone)
            joining.append(_Row(request, decoder, prompt["input_ids"], self.texts))
        if not joining:
            return []
        try:
            logits, alone_logits = batch.join(prompts, unconditional)
        except Exception as error:  # the joining rows fail; the running ones go on
            for row in joining:
                row.fail(error, f"reading its prompt (with {len(joining) - 1} other joining)")
            return []
        return self._take(joining, logits, alone_logits)

    def _step(self, batch: GuidedBatch, rows: list[_Row]) -> list[_Row]:
        """Drop the rows that ended or were abandoned, then one decoding step for the others; the rows still going."""
        for row in rows:
            if row.stream.finish_reason is None and row.request.gone.is_set():
                row.stream.abandon()
        going = [i for i, row in enumerate(rows) if row.stream.finish_reason is None]
        batch.keep(going)
        rows = [rows[i] for i in going]
        if not rows:
            return []
        self.on_step(len(rows))
        try:
            logits, alone_logits = batch.step([row.next_token for row in rows])
        except Exception as error:  # a failed step answers its rows with the error and empties the batch
            batch.keep([])
            for row in rows:
                row.fail(error, f"in a decoding step of {len(rows)} rows")
            return []
        return self._take(rows, logits, alone_logits)

    def _take(self, rows: list[_Row], logits, alone_logits) -> list[_Row]:
        """Each row's next token from its logits (guided by those after its pair without the persona, where it has a
        persona weight), handed to its stream; a row whose choice failed ends with its error. The rows, all of them
        (those that ended leave at the next step)."""
        choices = choose_tokens([row.decoder for row in rows], logits, alone_logits)
        for row, choice in zip(rows, choices):
            self._give(row, choice)
        return rows

    def _give(self, row: _Row, choice: Choice) -> None:
        try:
            if choice.error is not None:
                raise choice.error
            row.take(choice.token, choice.logprob, self.loaded.ids.eos)
        except Exception as error:
            row.fail(error, "choosing its next token")


def reply_streams(
    batcher: ReplyBatcher,
    persona: list[str],
    history: list[str],
    decoding: DecodingArguments,
    *,
    seeds: list[int | None] = (None,),
    stop: list[str] = (),
    top_logprobs: int | None = None,
    request_id: str | None = None,
) -> list[AsyncIterator[ReplyEvent]]:
    """Queue one request per seed (the choices of one API request, which share ``request_id``) together, all or none
    (see :meth:`ReplyBatcher.submit`: nothing is queued when it raises), and return the events of each as they come,
    its end last; with ``rerank_samples`` k (sampling), each request is k sampled rows, the one the multiple-choice
    head ranks first its answer (:mod:`~persona.serving.reranking`; :class:`Unsupported` for a prompted model). Call
    it inside the event loop that reads them."""
    samples = decoding.samples
    if samples > 1 and batcher.loaded.prompted:
        raise Unsupported(
            "rerank_samples",
            f"rerank_samples needs a trained multiple-choice head; {batcher.loaded.name} is a prompted model: drop "
            "rerank_samples",
        )
    loop = asyncio.get_running_loop()
    queued = []
    for seed in seeds:
        events: asyncio.Queue[ReplyEvent] = asyncio.Queue()
        gone = threading.Event()
        deliver = _delivery(loop, events, gone)
        options = {"stop": list(stop), "seed": seed, "top_logprobs": top_logprobs, "gone": gone}
        if request_id:
            options["request_id"] = request_id
        queued.append((ReplyRequest(persona, history, decoding, deliver, **options), events))
    rows = [request for request, _ in queued]
    if samples > 1:
        rows = [sample for request in rows for sample in SampleGroup(request, samples, batcher.rank).samples()]
    batcher.submit(*rows)
    return [_events(request, events) for request, events in queued]


def _delivery(loop: asyncio.AbstractEventLoop, events: asyncio.Queue, gone: threading.Event):
    """The callback that hands a request's events, from the worker thread, to ``events`` in ``loop``; ``gone`` is set
    when that loop has closed."""

    def deliver(event: ReplyEvent) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the client's event loop is closed: nobody awaits the event, the batch goes on
            gone.set()

    return deliver


async def _events(request: ReplyRequest, events: asyncio.Queue) -> AsyncIterator[ReplyEvent]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REPLY_TIMEOUT_S
    try:
        while True:
            event = await asyncio.wait_for(events.get(), timeout=max(deadline - loop.time(), 0))
            yield event
            if event.finish_reason:
                return
    finally:
        request.gone.set()  # after the end a no-op; before it (a client that disconnected, a time-out) its row stops
