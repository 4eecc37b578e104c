"""Candidates for next-utterance classification, and the per-split view of the dialogs the model sees."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from persona.data.layout import kept_candidates
from persona.interrupts import raise_if_interrupted

ARROW_BATCH = 10_000  # dialogs read at a time from the Arrow table


def _candidate_lists(dialogs: datasets.Dataset) -> Iterator[pa.Array]:
    """The candidate lists of every turn of ``dialogs``, a batch of dialogs at a time, from the Arrow table."""
    for batch in dialogs.select_columns(["turns"]).with_format("arrow").iter(batch_size=ARROW_BATCH):
        yield pc.struct_field(pc.list_flatten(batch.column("turns").combine_chunks()), "candidates")


def reply_pool(dialogs: datasets.Dataset) -> pa.Array:
    """The distinct gold replies of a split, sorted (as Python sorts text): where distractors are drawn from. Read
    from the Arrow table in batches and kept as one Arrow array, never as Python strings."""
    unique = []
    for candidates in _candidate_lists(dialogs):
        last = np.cumsum(pc.list_value_length(candidates).to_numpy(zero_copy_only=False)) - 1
        unique.append(pc.unique(pc.list_flatten(candidates).take(pa.array(last))))
    pool = pc.unique(pa.concat_arrays(unique)) if unique else pa.array([], pa.string())
    return pool.take(pc.sort_indices(pool))


def _candidate_counts(dialogs: datasets.Dataset) -> tuple[int, int]:
    """The fewest and the most candidates of any turn of ``dialogs``."""
    fewest, most = None, 0
    for candidates in _candidate_lists(dialogs):
        counts = pc.list_value_length(candidates)
        if len(counts):
            low, high = (value.as_py() for value in pc.min_max(counts).values())
            fewest, most = low if fewest is None else min(fewest, low), max(most, high)
    return fewest or 0, most


def split_view(
    dialogs: datasets.Dataset, *, wanted: int, seed: int, role: str, split: datasets.Dataset, cache_file: str
) -> tuple[datasets.Dataset, int]:
    """The dialogs of a role as the model sees them: exactly ``wanted`` candidates per turn, and only the canonical
    columns (their ``utterances`` and ``conversation`` dropped).

    Turns with more candidates keep the last ``wanted`` (the gold reply is last). Turns with fewer are topped up with
    distractors from the :func:`reply_pool` of the whole ``split`` that ``dialogs`` were taken from (built on first
    need) that occur nowhere in the dialog itself (its ``utterances``), never twice, sampled with ``seed`` and the
    ``role`` (``train``, ``eval``: the same on every run and process, whatever the split is called); a turn keeps
    fewer only when the split has too few distinct replies. ``wanted <= 0`` keeps every candidate. Where a turn
    changes, ``datasets.map`` writes the view to ``cache_file``; where none does, the dialogs are returned as they
    are. Returns the dialogs and how many distractors were sampled.
    """
    extra_columns = ["utterances", "conversation"]
    if wanted <= 0 or _candidate_counts(dialogs) == (wanted, wanted):
        return dialogs.remove_columns(extra_columns), 0
    rng = np.random.default_rng([seed, zlib.crc32(role.encode())])
    sampled, pool = 0, None

    def view(batch: dict) -> dict:
        nonlocal sampled, pool
        raise_if_interrupted()
        viewed = []
        for turns, utterances in zip(batch["turns"], batch["utterances"]):
            own = set(utterances)
            kept = []
            for turn in turns:
                candidates = kept_candidates(turn["candidates"], wanted)
                missing = wanted - len(candidates)
                if missing > 0:
                    pool = reply_pool(split) if pool is None else pool
                    extra = _sample(pool, missing, own | set(candidates), rng)
                    candidates = extra + candidates
                    sampled += len(extra)
                kept.append({"history": turn["history"], "candidates": candidates})
            viewed.append(kept)
        return {"turns": viewed}

    view_set = dialogs.map(
        view,
        batched=True,
        remove_columns=extra_columns,
        cache_file_name=cache_file,
        load_from_cache_file=False,
        new_fingerprint=f"{dialogs._fingerprint}-view-{role}-{wanted}-{seed}",
        desc=f"Candidates [{role}]",
    )
    return view_set, sampled


def _sample(pool: pa.Array, count: int, excluded: set[str], rng: np.random.Generator) -> list[str]:
    picks: list[str] = []
    draws = rng.permutation(len(pool)) if len(pool) <= 8 * count else rng.integers(0, len(pool), 8 * count)
    for index in draws:
        text = pool[int(index)].as_py()
        if text not in excluded:
            excluded.add(text)
            picks.append(text)
            if len(picks) == count:
                return picks
    if len(draws) < len(pool):  # unlucky draws: fall back to a full pass
        return picks + _sample(pool, count - len(picks), excluded, rng)
    return picks
