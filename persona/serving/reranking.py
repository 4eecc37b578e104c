"""Reranked replies in persona's own engine (``rerank_samples`` k): one reply decoded as k sampled rows of the running
batch, the one the multiple-choice head ranks first answered, as persona-chat and persona-eval rerank
(:func:`persona.model.decoding.generate_replies`).

Sample i of a reply seeded with ``seed`` is seeded ``choice_seed(seed, i)``: the samples of a reranked reply are the
replies that ``n`` k would return, and the answer is the one of them the head ranks first (with ``n`` choices too,
choice j is seeded as choice j·k would be, so that no two choices share a sample). Nothing of a reranked
reply is streamed before its last sample ends (the ranking needs them all); then the chosen sample's text comes as
one delta, with its tokens' log-probabilities when asked for, and its end (its finish reason and token count).
A sample that fails ends the reply with its error and stops the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from persona.serving.engine import ReplyEvent, choice_seed

if TYPE_CHECKING:
    from persona.serving.batching import ReplyRequest

Rank = Callable[[list[int], list[list[int]]], int]  # (prompt ids, each sample's reply ids) -> the chosen sample


class SampleGroup:
    """The ``count`` samples of one reranked ``request``, each sample's events held back until every sample has
    ended, then the one ``rank`` chooses delivered to the request. Called from the worker thread only."""

    def __init__(self, request: ReplyRequest, count: int, rank: Rank):
        self.request, self.rank = request, rank
        self.events: list[list[ReplyEvent]] = [[] for _ in range(count)]
        self.replies: list[list[int] | None] = [None] * count
        self.prompt_ids: list[int] = []
        self.ended = 0
        self.answered = False

    def samples(self) -> list[ReplyRequest]:
        """The requests of the samples: the request's own settings, each its own seed, its events and its reply's
        tokens sent here; they share the request's id and its client (when it leaves, every sample stops)."""
        return [
            replace(
                self.request,
                deliver=self._collector(index),
                seed=choice_seed(self.request.seed, index),
                on_reply=self._reply_of(index),
            )
            for index in range(len(self.events))
        ]

    def _reply_of(self, index: int) -> Callable[[list[int], list[int]], None]:
        def keep(prompt_ids: list[int], reply_ids: list[int]) -> None:
            self.prompt_ids, self.replies[index] = prompt_ids, reply_ids

        return keep

    def _collector(self, index: int) -> Callable[[ReplyEvent], None]:
        def collect(event: ReplyEvent) -> None:
            if self.answered:
                return
            if event.error is not None:
                self._answer([event])
                self.request.gone.set()  # the samples still decoding stop at the next step
                return
            self.events[index].append(event)
            self.ended += bool(event.finish_reason)
            if self.ended == len(self.events):
                self._answer_best()

        return collect

    def _answer_best(self) -> None:
        try:
            chosen = self.events[self.rank(self.prompt_ids, self.replies)]
        except Exception as error:  # the ranking's forward pass failed: this reply fails, the batch goes on
            self.answered = True
            self.request.fail(error, "ranking its samples")
            return
        *deltas, end = chosen
        text = "".join(event.delta for event in deltas)
        logprobs = [entry for event in deltas for entry in event.logprobs]
        self._answer([ReplyEvent(delta=text, logprobs=logprobs), end] if text or logprobs else [end])

    def _answer(self, events: list[ReplyEvent]) -> None:
        self.answered = True
        for event in events:
            self.request.deliver(event)
