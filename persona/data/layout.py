"""The TransferTransfo input layout of transfer-learning-conv-ai (the reference), built from token ids.

    <bos> persona...  <speaker?> h1...  ...  <speaker2> h_last...  <speaker1> reply... <eos>

As the reference's ``build_input_from_segments`` does it: speakers alternate backwards from the reply,
which is always ``<speaker1>`` (the bot); the utterance before it is the partner's ``<speaker2>``, the one
before that ``<speaker1>``, and so on. LM labels are -100 but on the gold reply's tokens after its
speaker token (``<eos>`` included); ``mc_token_ids`` is the index of the last token.

Token types: each segment's tokens carry its own speaker token, the persona ``<speaker1>`` (the bot's).
The reference counts them forwards from the persona (``<speaker1>``, ``<speaker2>``, ...), which is the
same for an odd number of history utterances: every PersonaChat turn (whose history starts with the
partner, or with ``__ SILENCE __`` when the bot opens) and every turn persona builds from conversations.

Features are stored compactly: the persona+history *prefix* once per example and the reply of each
candidate beside it. :func:`build_inputs` is the reference contract; :func:`build_prefix` +
:func:`build_candidate` are its two halves, which the feature builder, the collator and the fast path use.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import numpy as np

from persona.data.special_tokens import SpecialIds

IGNORE_INDEX = -100
REPLY_OVERHEAD = 2  # the <speaker1> before each candidate reply and the <eos> after it


def gold_index(candidates: Sequence) -> int:
    """Where a turn's gold reply sits among its candidates: last, as in PersonaChat and the reference."""
    return len(candidates) - 1


def gold_reply(candidates: Sequence):
    """A turn's gold reply (see :func:`gold_index`)."""
    return candidates[gold_index(candidates)]


def kept_candidates(candidates: Sequence, wanted: int) -> list:
    """The last ``wanted`` candidates (all of them for ``wanted <= 0``): the gold reply always among them, last."""
    return list(candidates[-wanted:] if wanted > 0 else candidates)


def history_window(history: Sequence, max_history: int) -> list:
    """The utterances a turn keeps: the last ``2*max_history+1`` (the reference's ``max_history`` exchanges and
    the partner's last utterance)."""
    return list(history[-(2 * max_history + 1) :])


def history_speakers(num_history: int, ids: SpecialIds) -> list[int]:
    """The speaker token of each history utterance: the partner's right before the reply, alternating back."""
    pair = (ids.bot, ids.partner) if num_history % 2 == 0 else (ids.partner, ids.bot)
    return [pair[j % 2] for j in range(num_history)]


def build_prefix(persona: Sequence[Sequence[int]], history: Sequence[Sequence[int]], ids: SpecialIds) -> list[int]:
    """``<bos> persona... <speaker?> h1 ... <speaker2> h_last`` as one id list."""
    prefix = [ids.bos, *chain.from_iterable(persona)]
    for speaker, utterance in zip(history_speakers(len(history), ids), history):
        prefix.append(speaker)
        prefix.extend(utterance)
    return prefix


def build_candidate(reply: Sequence[int], ids: SpecialIds, with_eos: bool = True) -> list[int]:
    """``<speaker1> reply... <eos>``, the bot's turn (no ``<eos>`` while the reply is being generated)."""
    return [ids.bot, *reply, *([ids.eos] if with_eos else [])]


def token_types(input_ids: Sequence[int] | np.ndarray, ids: SpecialIds) -> np.ndarray:
    """Token type of each position: the last speaker token at or before it, the bot's ``<speaker1>`` before any.

    User text is tokenized with special tokens split, so speaker ids appear only where the layout put them.
    """
    input_ids = np.asarray(input_ids)
    is_speaker = (input_ids == ids.speaker1) | (input_ids == ids.speaker2)
    last = np.maximum.accumulate(np.where(is_speaker, np.arange(input_ids.shape[-1]), -1), axis=-1)
    return np.where(last >= 0, np.take_along_axis(input_ids, np.maximum(last, 0), axis=-1), ids.bot)


def build_inputs(persona, history, reply, ids: SpecialIds, *, lm_labels: bool, with_eos: bool = True) -> dict:
    """The model input of one (persona, history, reply): the reference's ``build_input_from_segments``.

    Args:
        persona: token-id lists, one per persona sentence.
        history: token-id lists, one per utterance, oldest first (already cut to the history window).
        reply: the reply's token ids.
        ids: the special tokens' ids in the model's vocabulary.
        lm_labels: whether the reply is the gold one (its tokens get LM labels) or a distractor (all -100).
        with_eos: end the reply with ``<eos>`` (False while generating it).

    Returns:
        ``input_ids``, ``token_type_ids``, ``labels`` (lists of ints) and ``mc_token_ids`` (an int).
    """
    segments = [[ids.bos, *chain.from_iterable(persona)]]
    segments += [[speaker, *utterance] for speaker, utterance in zip(history_speakers(len(history), ids), history)]
    segments.append(build_candidate(reply, ids, with_eos))
    input_ids = list(chain.from_iterable(segments))
    types = [ids.bot] * len(segments[0]) + [segment[0] for segment in segments[1:] for _ in segment]
    labels = [IGNORE_INDEX] * len(input_ids)
    if lm_labels:
        labels[len(input_ids) - len(segments[-1]) + 1 :] = segments[-1][1:]
    return {"input_ids": input_ids, "token_type_ids": types, "labels": labels, "mc_token_ids": len(input_ids) - 1}


def prefix_length(persona: Sequence[Sequence[int]], history: Sequence[Sequence[int]]) -> int:
    """The tokens of :func:`build_prefix`: ``<bos>``, the persona, each utterance and its speaker token."""
    return 1 + sum(map(len, persona)) + sum(len(u) + 1 for u in history)


def fit_context(
    persona: list[list[int]], history: list[list[int]], reply_length: int, max_length: int
) -> tuple[list[list[int]], list[list[int]], bool]:
    """Drop the oldest history utterances, then persona sentences, until prefix + reply fit ``max_length``.

    ``reply_length`` counts the reply's speaker token and ``<eos>``. Returns the kept persona, the kept
    history and whether anything was dropped. The reply is never cut (the caller checks it fits alone).
    """
    persona, history = list(persona), list(history)
    length = prefix_length(persona, history) + reply_length
    truncated = False
    while length > max_length and history:
        length -= len(history.pop(0)) + 1
        truncated = True
    while length > max_length and persona:
        length -= len(persona.pop(0))
        truncated = True
    return persona, history, truncated
