"""Dialogs to tokenized features with ``datasets.map``: one example per turn (and persona rotation).

Each example stores its persona+history prefix once and its candidates beside it (gold last), as the model's
:class:`~persona.data.input_layouts.Layout` builds them: in the reference layout the reply tokens, which the collator
wraps in ``<speaker1> ... <eos>``; in the chat-template layout whole blocks up to the end-of-turn token, and with
``label_history`` the ``label_spans`` of its prefix that carry LM labels too (the bot's earlier replies; empty
otherwise); with ``persona_contrast`` K, also ``persona_swaps``: the same turn's prefix after K other personas of
the batch (the persona-contrastive loss scores the gold reply after each, :mod:`persona.training.trainer`); with
``guidance_distillation``, also ``persona_free_prefix``: the same turn's prefix without any persona (the guidance-
distillation loss guides the teacher's distribution over the gold reply's tokens by its distribution after it). A
turn whose gold reply cannot fit the model's positions even alone is skipped (its record named in the
:class:`~persona.data.skips.SkipLog`), or is an error in strict mode.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import datasets

from persona.data.input_layouts import GoldTooLong, Layout
from persona.data.skips import RecordError, SkipLog
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
        "persona_swaps": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
        "persona_free_prefix": datasets.Sequence(datasets.Value("int32")),
    }
)


def rotations(persona: list, count: int) -> list[list]:
    """``count`` orderings of the persona sentences, each the previous one rotated right by one (the reference's)."""
    orderings = [list(persona)]
    for _ in range(count - 1):
        previous = orderings[-1]
        orderings.append([previous[-1], *previous[:-1]])
    return orderings


def other_personas(personas: list[list[str]], own: int, count: int, seed: int) -> list[list[str]]:
    """``count`` distinct personas of ``personas`` (a map batch's), none equal to the ``own``-th one, drawn with a
    generator seeded by ``seed`` (fewer where the batch has fewer others)."""
    others = sorted({tuple(persona) for persona in personas} - {tuple(personas[own])})
    return [list(persona) for persona in random.Random(seed).sample(others, min(count, len(others)))]


def _too_long(tokens: int, max_input_length: int, where: str) -> RecordError:
    return RecordError(
        f"the gold reply ({tokens} tokens) cannot fit the model's {max_input_length} positions",
        where=where,
        fix="shorten or drop that utterance (gold replies are never truncated), or leave strict off to skip such "
        "turns.",
        reason="gold reply too long",
    )


def tokenize_batch(
    batch: dict,
    indices: list[int],
    *,
    layout: Layout,
    max_input_length: int,
    permutations: int,
    strict: bool,
    skip_log: str,
    label_history: bool = False,
    persona_contrast: int = 0,
    guidance_distillation: bool = False,
    seed: int = 0,
) -> dict:
    """The ``datasets.map`` function: a batch of dialogs in, their examples out, built by the ``layout``'s turn
    builder (with ``label_history``, the label spans too; with ``persona_contrast`` K, each turn's prefix after K
    other personas of the batch, drawn per dialog with ``seed``; with ``guidance_distillation``, its prefix without a
    persona). A turn whose gold reply cannot fit gives no
    example; it is appended, as JSON ``[dialog_id, turn_id, where, what]``, to this process's file
    ``skip_log-PID.jsonl`` (a map worker has no other way to tell; strict: a :class:`RecordError`)."""
    build = layout.turn_builder(batch, max_input_length=max_input_length, label_history=label_history)
    out = {name: [] for name in FEATURES}
    skipped = []
    for position, (dialog_id, persona, turns, record) in enumerate(
        zip(indices, batch["persona"], batch["turns"], batch["record"])
    ):
        others = other_personas(batch["persona"], position, persona_contrast, seed * 1_000_003 + dialog_id)
        swaps_of: dict[int, tuple] = {}  # per turn: the same for every rotation of the dialog's own persona
        for ordering in rotations(persona, permutations):
            for turn_id, turn in enumerate(turns):
                try:
                    prefix, candidates, truncated, spans = build(ordering, turn)
                    if turn_id not in swaps_of:  # fitted as the turn is, candidates and all
                        free = build([], turn)[0] if guidance_distillation else []
                        swaps_of[turn_id] = [build(other, turn)[0] for other in others], free
                    swaps, free = swaps_of[turn_id]
                except GoldTooLong as too_long:
                    error = _too_long(too_long.tokens, max_input_length, f"{record}, turn {turn_id}")
                    if strict:
                        raise error from None
                    skipped.append([dialog_id, turn_id, error.where, error.what])
                    continue
                gold = len(candidates[-1]) + layout.reply_overhead
                length = len(prefix) + sum(len(c) + layout.reply_overhead for c in candidates)
                length += sum(len(swap) + gold for swap in swaps) + (len(free) + gold if free else 0)
                values = (dialog_id, turn_id, prefix, candidates, length, truncated, spans, swaps, free)
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
    layout: Layout,
    *,
    max_input_length: int,
    permutations: int,
    num_proc: int,
    skips: SkipLog,
    split: str,
    desc: str,
    folder: Path,
    scratch: Path,
    label_history: bool = False,
    persona_contrast: int = 0,
    guidance_distillation: bool = False,
    seed: int = 0,
) -> datasets.Dataset:
    """Tokenized features of one split's dialogs in the input ``layout`` (batched ``datasets.map``, ``num_proc``
    workers), inputs of at most ``max_input_length`` tokens, written as Arrow files into ``folder`` (one per worker),
    where they stay.

    Turns whose gold reply cannot fit are skipped into ``skips`` (as ``split``), told by the workers through files in
    ``scratch``; ``desc`` names the progress bar; ``label_history`` (the chat-template layout) names the label spans
    of each prefix; ``persona_contrast`` and ``seed``: each turn's prefixes after other personas;
    ``guidance_distillation``: each turn's prefix without a persona (:func:`tokenize_batch`).
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
                "label_history": label_history,
                "max_input_length": max_input_length,
                "permutations": permutations,
                "persona_contrast": persona_contrast,
                "guidance_distillation": guidance_distillation,
                "seed": seed,
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
