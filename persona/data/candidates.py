"""Candidates for next-utterance classification, and the per-split view of the dialogs the model sees."""

from __future__ import annotations

import zlib

import numpy as np

from persona.data.layout import gold_reply, history_window, kept_candidates
from persona.data.readers import Dialog


def reply_pool(dialogs: list[Dialog]) -> list[str]:
    """The distinct gold replies of a split, sorted: where distractors are drawn from."""
    return sorted({gold_reply(turn["candidates"]) for dialog in dialogs for turn in dialog["turns"]})


def split_view(
    dialogs: list[Dialog], *, wanted: int, max_history: int, seed: int, role: str, pool: list[str]
) -> tuple[list[Dialog], int]:
    """New dialogs with each turn's history cut to its :func:`~persona.data.layout.history_window` and exactly
    ``wanted`` candidates.

    Turns with more candidates keep the last ``wanted`` (the gold reply is last). Turns with fewer are
    topped up with distractors from ``pool`` (the split's :func:`reply_pool`) that occur nowhere in the dialog itself,
    never twice, sampled with ``seed`` and the ``role`` (``train``, ``eval``: the same on every run and process,
    whatever the split is called); a turn
    keeps fewer only when the split has too few distinct replies. ``wanted <= 0`` keeps every candidate.
    Returns the dialogs and how many distractors were sampled.
    """
    rng = np.random.default_rng([seed, zlib.crc32(role.encode())])
    sampled = 0
    view = []
    for dialog in dialogs:
        own = {u for turn in dialog["turns"] for u in (*turn["history"], gold_reply(turn["candidates"]))}
        turns = []
        for turn in dialog["turns"]:
            candidates = kept_candidates(turn["candidates"], wanted)
            missing = wanted - len(candidates)
            if missing > 0:
                extra = _sample(pool, missing, own | set(candidates), rng)
                candidates = extra + candidates
                sampled += len(extra)
            turns.append({"history": history_window(turn["history"], max_history), "candidates": candidates})
        view.append({"persona": dialog["persona"], "turns": turns, "record": dialog["record"]})
    return view, sampled


def _sample(pool: list[str], count: int, excluded: set[str], rng: np.random.Generator) -> list[str]:
    picks: list[str] = []
    draws = rng.permutation(len(pool)) if len(pool) <= 8 * count else rng.integers(0, len(pool), 8 * count)
    for index in draws:
        text = pool[index]
        if text not in excluded:
            excluded.add(text)
            picks.append(text)
            if len(picks) == count:
                return picks
    if len(draws) < len(pool):  # unlucky draws: fall back to a full pass
        return picks + _sample(pool, count - len(picks), excluded, rng)
    return picks
