"""Candidates for next-utterance classification, and the per-split view of the dialogs the model sees."""

from __future__ import annotations

import os
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path

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


COUNT_COLUMNS = ("fewest_candidates", "most_candidates")  # per dialog, written as it is read (see split_view)


def candidate_counts(turns: list[dict]) -> dict[str, int]:
    """The fewest and the most candidates of any of a dialog's ``turns``, as the :data:`COUNT_COLUMNS` of its row."""
    counts = [len(turn["candidates"]) for turn in turns]
    return dict(zip(COUNT_COLUMNS, (min(counts, default=0), max(counts, default=0))))


def _fewest_and_most(dialogs: datasets.Dataset) -> tuple[int, int]:
    """The fewest and the most candidates of any turn of ``dialogs``, from their :data:`COUNT_COLUMNS` (two integer
    columns, not the candidates themselves)."""
    table = dialogs.select_columns(list(COUNT_COLUMNS)).with_format("arrow")[:]
    fewest, most = (pc.min_max(table.column(name)).as_py() for name in COUNT_COLUMNS)
    return fewest["min"] or 0, most["max"] or 0


def split_view(
    dialogs: datasets.Dataset,
    *,
    wanted: int,
    seed: int,
    role: str,
    split: datasets.Dataset,
    cache_file: str,
    canonical_file: Path | None = None,
) -> tuple[datasets.Dataset, int]:
    """The dialogs of a role as the model sees them, in the Arrow file ``cache_file``: exactly ``wanted`` candidates
    per turn, and only the canonical columns (their ``utterances``, ``conversation`` and :data:`COUNT_COLUMNS`
    dropped).

    Turns with more candidates keep the last ``wanted`` (the gold reply is last). Turns with fewer are topped up with
    distractors from the :func:`reply_pool` of the whole ``split`` that ``dialogs`` were taken from (built on first
    need) that occur nowhere in the dialog itself (its ``utterances``), never twice, sampled with ``seed`` and the
    ``role`` (``train``, ``eval``: the same on every run and process, whatever the split is called); a turn keeps
    fewer only when the split has too few distinct replies. ``wanted <= 0`` keeps every candidate. Where a turn
    changes, ``datasets.map`` writes the view; where none does, the canonical columns are written as they are, or,
    given the ``canonical_file`` that already holds exactly them, that file is linked (nothing is read or copied).
    Returns the dialogs and how many distractors were sampled.
    """
    extra_columns = ["utterances", "conversation", *COUNT_COLUMNS]
    fingerprint = f"{dialogs._fingerprint}-view-{role}-{wanted}-{seed}"
    if wanted <= 0 or _fewest_and_most(dialogs) == (wanted, wanted):
        if canonical_file is not None:
            _link_or_copy(canonical_file, Path(cache_file))
            return datasets.Dataset.from_file(cache_file), 0
        kept = dialogs.remove_columns(extra_columns)
        return kept.flatten_indices(cache_file_name=cache_file, new_fingerprint=fingerprint), 0
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
        new_fingerprint=fingerprint,
        desc=f"Candidates [{role}]",
    )
    return view_set, sampled


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (the same bytes, nothing read), or a copy where links are refused."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


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
