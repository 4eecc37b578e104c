"""Dialogs to tokenized features with ``datasets.map``: one example per turn (and persona rotation).

Each example stores its persona+history prefix once and its candidates beside it (gold last): in the reference
layout the reply tokens, which the collator wraps in ``<speaker1> ... <eos>`` (:mod:`persona.data.layout`); in the
chat-template layout whole blocks up to the end-of-turn token (:mod:`persona.data.chat_layout`), and with
``label_history`` the ``label_spans`` of its prefix that carry LM labels too (the bot's earlier replies; empty
otherwise). A turn whose
gold reply cannot fit the model's positions even alone is skipped (its record named in the
:class:`~persona.data.skips.SkipLog`), or is an error in strict mode.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets

from persona.configs import CHAT_TEMPLATE_LAYOUT, REFERENCE_LAYOUT
from persona.data.chat_layout import label_spans, template_turn
from persona.data.layout import REPLY_OVERHEAD, build_prefix, fit_context, gold_index
from persona.data.skips import RecordError, SkipLog
from persona.data.special_tokens import SpecialIds, special_ids
from persona.data.tokenize import encode_texts
from persona.interrupts import deferred_interrupts

FEATURES = datasets.Features(
    {
        "dialog_id": datasets.Value("int32"),
        "turn_id": datasets.Value("int32"),
        "prefix_ids": datasets.Sequence(datasets.Value("int32")),
        "candidates": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
        "length": datasets.Value("int32"),
        "truncated": datasets.Value("bool"),
        "label_spans": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
    }
)


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


class GoldTooLong(Exception):
    """A turn whose gold reply cannot fit the model's positions even alone (its length in tokens)."""

    def __init__(self, tokens: int):
        super().__init__(tokens)
        self.tokens = tokens


def reference_turns(batch: dict, *, tokenizer, ids: SpecialIds, max_length: int):
    """The turn builder of the reference layout for one ``datasets.map`` batch: ``build(persona, turn)`` gives the
    prefix ``<bos> persona... <speaker> h...``, the candidate replies (wrapped by the collator) and whether anything
    was cut. Every distinct string of the batch is tokenized once, in one call of the fast tokenizer, with special
    tokens split so that user text can never forge a ``<speaker>`` token."""
    strings = sorted(
        {s for persona in batch["persona"] for s in persona}
        | {s for turns in batch["turns"] for turn in turns for s in (*turn["history"], *turn["candidates"])}
    )
    token_ids = dict(zip(strings, encode_texts(tokenizer, strings)))

    def build(persona: list[str], turn: dict) -> tuple[list[int], list[list[int]], bool, list]:
        candidates, cut = fit_candidates([token_ids[c] for c in turn["candidates"]], max_length)
        if cut is None:
            raise GoldTooLong(len(candidates[gold_index(candidates)]))
        longest = max(len(c) for c in candidates) + REPLY_OVERHEAD
        history = [token_ids[h] for h in turn["history"]]
        kept_persona, kept_history, truncated = fit_context(
            [token_ids[p] for p in persona], history, longest, max_length
        )
        return build_prefix(kept_persona, kept_history, ids), candidates, truncated or cut, []

    return build


def template_turns(batch: dict, *, tokenizer, ids: SpecialIds, max_length: int, label_history: bool = False):
    """The turn builder of the chat-template layout (:mod:`persona.data.chat_layout`): the prefix and the candidate
    blocks, the oldest history then persona sentences dropped until they fit, distractor blocks cut (their
    end-of-turn token kept), and with ``label_history`` the label spans of the prefix as it is kept."""

    def build(persona: list[str], turn: dict) -> tuple[list[int], list[list[int]], bool, list]:
        persona, history, truncated = list(persona), list(turn["history"]), False
        example = template_turn(tokenizer, persona, history, turn["candidates"])
        while len(example["prefix_ids"]) + max(map(len, example["candidates"])) > max_length and (history or persona):
            (history if history else persona).pop(0)
            example, truncated = template_turn(tokenizer, persona, history, turn["candidates"]), True
        prefix, blocks = example["prefix_ids"], example["candidates"]
        budget = max_length - len(prefix)
        if len(blocks[gold_index(blocks)]) > budget:
            raise GoldTooLong(len(blocks[gold_index(blocks)]))
        cut = any(len(block) > budget for block in blocks)
        return (
            prefix,
            [block if len(block) <= budget else [*block[: budget - 1], block[-1]] for block in blocks],
            truncated or cut,
            label_spans(tokenizer, persona, history, prefix) if label_history else [],
        )

    return build


TURN_BUILDERS = {REFERENCE_LAYOUT: reference_turns, CHAT_TEMPLATE_LAYOUT: template_turns}


def _too_long(tokens: int, max_length: int, where: str) -> RecordError:
    return RecordError(
        f"the gold reply ({tokens} tokens) cannot fit the model's {max_length} positions",
        where=where,
        fix="shorten or drop that utterance (gold replies are never truncated), or leave strict off to skip such "
        "turns.",
        reason="gold reply too long",
    )


def tokenize_batch(
    batch: dict,
    indices: list[int],
    *,
    layout: str,
    max_length: int,
    permutations: int,
    strict: bool,
    skip_log: str,
    **builder,
) -> dict:
    """The ``datasets.map`` function: a batch of dialogs in, their examples out, in the ``layout`` (``builder``: the
    tokenizer, special ids and, in the chat-template layout, ``label_history`` that its turn builder takes). A turn
    whose gold reply cannot fit gives no example; it is appended, as JSON ``[dialog_id, turn_id, where, what]``, to
    this process's file ``skip_log-PID.jsonl`` (a map worker has no other way to tell; strict: a
    :class:`RecordError`)."""
    build = TURN_BUILDERS[layout](batch, max_length=max_length, **builder)
    overhead = REPLY_OVERHEAD if layout == REFERENCE_LAYOUT else 0
    out = {name: [] for name in FEATURES}
    skipped = []
    for dialog_id, persona, turns, record in zip(indices, batch["persona"], batch["turns"], batch["record"]):
        for ordering in rotations(persona, permutations):
            for turn_id, turn in enumerate(turns):
                try:
                    prefix, candidates, truncated, spans = build(ordering, turn)
                except GoldTooLong as too_long:
                    error = _too_long(too_long.tokens, max_length, f"{record}, turn {turn_id}")
                    if strict:
                        raise error from None
                    skipped.append([dialog_id, turn_id, error.where, error.what])
                    continue
                length = len(prefix) + sum(len(c) + overhead for c in candidates)
                values = (dialog_id, turn_id, prefix, candidates, length, truncated, spans)
                for name, value in zip(FEATURES, values):
                    out[name].append(value)
    if skipped:
        with open(f"{skip_log}-{os.getpid()}.jsonl", "a") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in skipped)
    return out


def _skipped_turns(skip_log: Path) -> list[list]:
    """The turns the map's processes skipped (:func:`tokenize_batch`), in corpus order."""
    rows = [
        json.loads(line)
        for path in skip_log.parent.glob(f"{skip_log.name}-*.jsonl")
        for line in path.read_text().splitlines()
    ]
    return sorted(rows, key=lambda row: row[:2])


def build_features(
    dialogs: datasets.Dataset,
    tokenizer,
    *,
    layout: str,
    max_length: int,
    permutations: int,
    num_proc: int,
    skips: SkipLog,
    split: str,
    desc: str,
    folder: Path,
    scratch: Path,
    label_history: bool = False,
) -> datasets.Dataset:
    """Tokenized features of one split's dialogs in the input ``layout`` (batched ``datasets.map``, ``num_proc``
    workers), written as Arrow files into ``folder`` (one per worker), where they stay.

    Turns whose gold reply cannot fit are skipped into ``skips`` (as ``split``), told by the workers through files in
    ``scratch``; ``desc`` names the progress bar; ``label_history`` (the chat-template layout) names the label spans
    of each prefix.
    """
    skip_log = scratch / f"skipped-{folder.name}"
    with deferred_interrupts():
        features = dialogs.map(
            tokenize_batch,
            with_indices=True,
            batched=True,
            batch_size=500,
            remove_columns=dialogs.column_names,
            features=FEATURES,
            num_proc=num_proc if num_proc > 1 and len(dialogs) >= 1000 else None,
            fn_kwargs={
                "layout": layout,
                "tokenizer": tokenizer,
                "ids": special_ids(tokenizer) if layout == REFERENCE_LAYOUT else None,
                **({"label_history": label_history} if layout == CHAT_TEMPLATE_LAYOUT else {}),
                "max_length": max_length,
                "permutations": permutations,
                "strict": skips.strict,
                "skip_log": str(skip_log),
            },
            cache_file_name=str(folder / "data.arrow"),
            load_from_cache_file=False,
            desc=f"Tokenizing {desc}",
        )
    for _, _, where, what in _skipped_turns(skip_log):
        skips.skip(RecordError(what, where=where, reason="gold reply too long"), split)
    return features
