"""Dialogs to tokenized features with ``datasets.map``: one example per turn (and persona rotation).

Each example stores its persona+history prefix once and its candidates' reply tokens beside it
(gold last); the collator builds the full layout of :mod:`persona.data.layout` from them.
"""

from __future__ import annotations

import datasets

from persona.data.layout import build_prefix, fit_context
from persona.data.tokenize import encode_texts
from persona.errors import DataError
from persona.special_tokens import SpecialIds, special_ids

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


def rotations(persona: list, count: int) -> list[list]:
    """``count`` orderings of the persona sentences, each the previous one rotated right by one (the seed's)."""
    orderings = [list(persona)]
    for _ in range(count - 1):
        previous = orderings[-1]
        orderings.append([previous[-1], *previous[:-1]])
    return orderings


def fit_candidates(candidates: list[list[int]], max_length: int) -> tuple[list[list[int]], bool | None]:
    """Cut distractors (never the gold reply, last) to fit with ``<bos>``, a speaker token and ``<eos>``.

    Returns the candidates and whether one was cut, or None for "cut" when the gold reply cannot fit.
    """
    budget = max_length - 3
    if len(candidates[-1]) > budget:
        return candidates, None
    cut = any(len(c) > budget for c in candidates[:-1])
    return [c[:budget] for c in candidates[:-1]] + [candidates[-1]], cut


def tokenize_batch(
    batch: dict, indices: list[int], *, tokenizer, ids: SpecialIds, max_length: int, permutations: int, source: str
) -> dict:
    """The ``datasets.map`` function: a batch of dialogs in, their examples out (``ids``: the special tokens).

    Every distinct string of the batch is tokenized once, in one call of the fast tokenizer, with
    special tokens split so that user text can never forge a ``<speaker>`` token.
    """
    strings = sorted(
        {s for persona in batch["persona"] for s in persona}
        | {s for turns in batch["turns"] for turn in turns for s in (*turn["history"], *turn["candidates"])}
    )
    token_ids = dict(zip(strings, encode_texts(tokenizer, strings)))
    out = {name: [] for name in FEATURES}
    for dialog_id, persona, turns in zip(indices, batch["persona"], batch["turns"]):
        persona_ids = [token_ids[s] for s in persona]
        for ordering in rotations(persona_ids, permutations):
            for turn_id, turn in enumerate(turns):
                candidates, cut = fit_candidates([token_ids[c] for c in turn["candidates"]], max_length)
                if cut is None:
                    raise DataError(
                        f"the gold reply ({len(candidates[-1])} tokens) cannot fit the model's {max_length} positions",
                        where=f"{source}, dialog {dialog_id}, turn {turn_id}",
                        fix="shorten or drop that utterance (gold replies are never truncated).",
                    )
                longest = max(len(c) for c in candidates) + 2
                kept_persona, kept_history, truncated = fit_context(
                    ordering, [token_ids[h] for h in turn["history"]], longest, max_length
                )
                prefix = build_prefix(kept_persona, kept_history, ids)
                out["dialog_id"].append(dialog_id)
                out["turn_id"].append(turn_id)
                out["prefix_ids"].append(prefix)
                out["candidates"].append(candidates)
                out["length"].append(len(prefix) + sum(len(c) + 2 for c in candidates))
                out["truncated"].append(truncated or cut)
    return out


def build_features(
    dialogs: datasets.Dataset, tokenizer, *, max_length: int, permutations: int, num_proc: int, source: str
) -> datasets.Dataset:
    """Tokenized features of one split's dialogs (batched ``datasets.map``, ``num_proc`` workers)."""
    return dialogs.map(
        tokenize_batch,
        with_indices=True,
        batched=True,
        batch_size=500,
        remove_columns=dialogs.column_names,
        features=FEATURES,
        num_proc=num_proc if num_proc > 1 and len(dialogs) >= 1000 else None,
        fn_kwargs={"tokenizer": tokenizer, "ids": special_ids(tokenizer), "max_length": max_length, "permutations": permutations, "source": source},
        desc=f"Tokenizing {source}",
        load_from_cache_file=False,
    )
