"""Dialogs to tokenized features with ``datasets.map``: one example per turn (and persona rotation).

Each example stores its persona+history prefix once and its candidates' reply tokens beside it
(gold last); the collator builds the full layout of :mod:`persona.data.layout` from them. A turn whose
gold reply cannot fit the model's positions even alone is skipped (its record named in the
:class:`~persona.data.skips.SkipLog`), or is an error in strict mode.
"""

from __future__ import annotations

import json

import datasets

from persona.data.layout import REPLY_OVERHEAD, build_prefix, fit_context, gold_index
from persona.data.skips import RecordError, SkipLog
from persona.data.special_tokens import SpecialIds, special_ids
from persona.data.tokenize import encode_texts

FEATURES = datasets.Features(
    {
        "dialog_id": datasets.Value("int32"),
        "turn_id": datasets.Value("int32"),
        "prefix_ids": datasets.Sequence(datasets.Value("int32")),
        "candidates": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
        "length": datasets.Value("int32"),
        "truncated": datasets.Value("bool"),
    }
)
SKIPPED = "skipped_because"  # a column of map's output only: JSON [where, what] of a skipped turn, "" if kept


def rotations(persona: list, count: int) -> list[list]:
    """``count`` orderings of the persona sentences, each the previous one rotated right by one (the reference's)."""
    orderings = [list(persona)]
    for _ in range(count - 1):
        previous = orderings[-1]
        orderings.append([previous[-1], *previous[:-1]])
    return orderings


def fit_candidates(candidates: list[list[int]], max_length: int) -> tuple[list[list[int]], bool | None]:
    """Cut distractors (never the gold reply) to fit with ``<bos>``, a speaker token and ``<eos>``.

    Returns the candidates and whether one was cut, or None for "cut" when the gold reply cannot fit.
    """
    budget = max_length - 1 - REPLY_OVERHEAD
    gold = gold_index(candidates)
    if len(candidates[gold]) > budget:
        return candidates, None
    cut = any(len(c) > budget for c in candidates[:gold])
    return [c[:budget] for c in candidates[:gold]] + [candidates[gold]], cut


def tokenize_batch(
    batch: dict, indices: list[int], *, tokenizer, ids: SpecialIds, max_length: int, permutations: int, strict: bool
) -> dict:
    """The ``datasets.map`` function: a batch of dialogs in, their examples out (``ids``: the special tokens).

    Every distinct string of the batch is tokenized once, in one call of the fast tokenizer, with
    special tokens split so that user text can never forge a ``<speaker>`` token. A turn whose gold reply
    cannot fit gives one row whose :data:`SKIPPED` column says why (strict: a :class:`RecordError`).
    """
    strings = sorted(
        {s for persona in batch["persona"] for s in persona}
        | {s for turns in batch["turns"] for turn in turns for s in (*turn["history"], *turn["candidates"])}
    )
    token_ids = dict(zip(strings, encode_texts(tokenizer, strings)))
    out = {name: [] for name in (*FEATURES, SKIPPED)}
    for dialog_id, persona, turns, record in zip(indices, batch["persona"], batch["turns"], batch["record"]):
        persona_ids = [token_ids[s] for s in persona]
        for ordering in rotations(persona_ids, permutations):
            for turn_id, turn in enumerate(turns):
                candidates, cut = fit_candidates([token_ids[c] for c in turn["candidates"]], max_length)
                out["dialog_id"].append(dialog_id)
                out["turn_id"].append(turn_id)
                if cut is None:
                    error = RecordError(
                        f"the gold reply ({len(candidates[gold_index(candidates)])} tokens) cannot fit the model's "
                        f"{max_length} positions",
                        where=f"{record}, turn {turn_id}",
                        fix="shorten or drop that utterance (gold replies are never truncated), or leave strict off "
                        "to skip such turns.",
                        reason="gold reply too long",
                    )
                    if strict:
                        raise error
                    for name, value in (
                        ("prefix_ids", []),
                        ("candidates", []),
                        ("length", 0),
                        ("truncated", False),
                        (SKIPPED, json.dumps([error.where, error.what])),
                    ):
                        out[name].append(value)
                    continue
                longest = max(len(c) for c in candidates) + REPLY_OVERHEAD
                kept_persona, kept_history, truncated = fit_context(
                    ordering, [token_ids[h] for h in turn["history"]], longest, max_length
                )
                prefix = build_prefix(kept_persona, kept_history, ids)
                out["prefix_ids"].append(prefix)
                out["candidates"].append(candidates)
                out["length"].append(len(prefix) + sum(len(c) + REPLY_OVERHEAD for c in candidates))
                out["truncated"].append(truncated or cut)
                out[SKIPPED].append("")
    return out


def build_features(
    dialogs: datasets.Dataset,
    tokenizer,
    *,
    max_length: int,
    permutations: int,
    num_proc: int,
    skips: SkipLog,
    split: str,
    desc: str,
) -> datasets.Dataset:
    """Tokenized features of one split's dialogs (batched ``datasets.map``, ``num_proc`` workers).

    Turns whose gold reply cannot fit are skipped into ``skips`` (as ``split``); ``desc`` names the progress bar.
    """
    features = dialogs.map(
        tokenize_batch,
        with_indices=True,
        batched=True,
        batch_size=500,
        remove_columns=dialogs.column_names,
        features=datasets.Features({**FEATURES, SKIPPED: datasets.Value("string")}),
        num_proc=num_proc if num_proc > 1 and len(dialogs) >= 1000 else None,
        fn_kwargs={
            "tokenizer": tokenizer,
            "ids": special_ids(tokenizer),
            "max_length": max_length,
            "permutations": permutations,
            "strict": skips.strict,
        },
        desc=f"Tokenizing {desc}",
        load_from_cache_file=False,
    )
    skipped = features.data.column(SKIPPED).to_pylist()
    kept = [index for index, why in enumerate(skipped) if not why]
    for why in filter(None, skipped):
        where, what = json.loads(why)
        skips.skip(RecordError(what, where=where, reason="gold reply too long"), split)
    if len(kept) < len(features):
        features = features.select(kept)
    return features.remove_columns(SKIPPED)
