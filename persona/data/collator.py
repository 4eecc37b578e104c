"""Batches with per-batch dynamic padding: packed (each prefix once, its candidates after it) or classic [batch,
candidates, length]."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from persona.data.layout import IGNORE_INDEX, build_candidate, gold_index, token_types
from persona.data.special_tokens import SpecialIds

CONTEXT_FREE = "context_free_"  # the prefix of the keys of the candidates' batch after an empty conversation
PERSONA_SWAP = "persona_swap_"  # the prefix of the keys of the gold replies' batch after other personas
SWAP_OWNER = PERSONA_SWAP + "owner"  # [S]: the turn (row of the batch) each swapped-persona row belongs to
PERSONA_FREE = "persona_free_"  # the prefix of the keys of the gold replies' batch after no persona, turn by turn
WITH_PERSONA = "with_persona_"  # the same after each turn's own prefix: the gold reply alone, turn by turn


def _pad(rows: list[list[int]], value: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(map(len, rows))
    array = np.full((len(rows), width), value, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        array[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return array, mask


def _gold_labels(candidate: list[int]) -> list[int]:
    """LM labels of the gold candidate ``<speaker1> reply <eos>``: every token but the speaker token."""
    return [IGNORE_INDEX, *candidate[1:]]


def _prefix_labels(example: dict) -> list[int]:
    """LM labels of a turn's prefix: its tokens inside its ``label_spans`` (the bot's earlier replies, where the
    features name them), ignored elsewhere."""
    prefix = example["prefix_ids"]
    labels = [IGNORE_INDEX] * len(prefix)
    for start, end in example.get("label_spans") or ():
        labels[start:end] = prefix[start:end]
    return labels


def _candidate_slots(examples: list[dict]) -> dict[str, np.ndarray]:
    """``candidate_valid`` [B, C] (False for slots padding a turn with fewer candidates), ``mc_labels`` [B] (the gold
    index) and ``gold_copies`` [B, C] (the candidates whose tokens are the gold reply's: scored as the gold, so that
    a turn whose gold reply is also among its distractors counts as a tie, whatever batch it falls in), C being the
    most candidates of any turn."""
    numbers = np.array([len(e["candidates"]) for e in examples])
    gold = np.array([gold_index(e["candidates"]) for e in examples])
    copies = np.zeros((len(examples), numbers.max()), dtype=bool)
    for row, example in enumerate(examples):
        candidates = example["candidates"]
        copies[row, : len(candidates)] = [list(c) == list(candidates[gold[row]]) for c in candidates]
    return {
        "candidate_valid": np.arange(numbers.max())[None, :] < numbers[:, None],
        "mc_labels": gold,
        "gold_copies": copies,
    }


def packed_batch(examples: list[dict], ids: SpecialIds, wrap: bool = True) -> dict[str, np.ndarray]:
    """The packed batch: one row per turn, its prefix once, then each candidate ``<speaker1> reply <eos>``.

    Every candidate restarts its positions where the prefix ends and (through ``block_ids``: 0 for the
    prefix, c+1 for candidate c) attends to the prefix and to itself only, so each of its tokens sees
    exactly what it sees in the classic layout, while the prefix runs once and no candidate is padded.

    Keys: ``input_ids``/``token_type_ids``/``attention_mask``/``position_ids``/``block_ids``/``labels``
    [B, T] (labels on the gold reply, and on the prefix's label spans); ``candidate_labels`` [B, T] (labels on
    every candidate's reply, for likelihood ranking); ``mc_token_ids`` [B, C] (the index in the row of each
    candidate's ``<eos>``); ``candidate_valid`` [B, C] (False for slots padding a turn with fewer
    candidates, which point at index 0); ``mc_labels`` [B] (the gold index: the last candidate).
    """
    count = max(len(e["candidates"]) for e in examples)
    rows, positions, blocks, labels, every_label, ends = [], [], [], [], [], []
    for example in examples:
        prefix, gold = example["prefix_ids"], gold_index(example["candidates"])
        row, label, block, position, end = (
            list(prefix),
            _prefix_labels(example),
            [0] * len(prefix),
            list(range(len(prefix))),
            [],
        )
        all_labels = [IGNORE_INDEX] * len(prefix)
        for c, reply in enumerate(example["candidates"]):
            candidate = build_candidate(reply, ids) if wrap else list(reply)
            row += candidate
            label += _gold_labels(candidate) if c == gold else [IGNORE_INDEX] * len(candidate)
            all_labels += _gold_labels(candidate)
            block += [c + 1] * len(candidate)
            position += range(len(prefix), len(prefix) + len(candidate))
            end.append(len(row) - 1)
        rows.append(row)
        labels.append(label)
        every_label.append(all_labels)
        blocks.append(block)
        positions.append(position)
        ends.append(end + [0] * (count - len(end)))
    input_ids, attention_mask = _pad(rows, ids.pad)
    return {
        "input_ids": input_ids,
        "token_type_ids": np.where(attention_mask == 1, token_types(input_ids, ids), ids.pad),
        "attention_mask": attention_mask,
        "position_ids": _pad(positions, 0)[0],
        "block_ids": _pad(blocks, -1)[0],
        "labels": _pad(labels, IGNORE_INDEX)[0],
        "candidate_labels": _pad(every_label, IGNORE_INDEX)[0],
        "mc_token_ids": np.array(ends),
        **_candidate_slots(examples),
    }


def classic_batch(examples: list[dict], ids: SpecialIds, wrap: bool = True) -> dict[str, np.ndarray]:
    """The classic layout: every candidate as the full sequence prefix + reply, [B, C, L], right-padded
    (a turn with fewer candidates is padded with ``prefix <speaker1> <eos>`` slots, not valid); ``labels`` on the
    gold reply (and the prefix's label spans, in the gold sequence only), ``candidate_labels`` on every candidate's
    reply."""
    count = max(len(e["candidates"]) for e in examples)
    sequences, labels, every_label = [], [], []
    for example in examples:
        prefix, gold = example["prefix_ids"], gold_index(example["candidates"])
        prefix_labels = _prefix_labels(example)
        for c in range(count):
            if c > gold:  # a slot padding a turn with fewer candidates
                candidate = build_candidate([], ids) if wrap else list(example["candidates"][gold][:1])
            else:
                candidate = build_candidate(example["candidates"][c], ids) if wrap else list(example["candidates"][c])
            sequences.append([*prefix, *candidate])
            labels.append(
                prefix_labels + _gold_labels(candidate) if c == gold else [IGNORE_INDEX] * len(sequences[-1])
            )
            every_label.append([IGNORE_INDEX] * len(prefix) + _gold_labels(candidate))
    input_ids, attention_mask = _pad(sequences, ids.pad)
    shape = (len(examples), count, input_ids.shape[1])
    return {
        "input_ids": input_ids.reshape(shape),
        "token_type_ids": np.where(attention_mask == 1, token_types(input_ids, ids), ids.pad).reshape(shape),
        "attention_mask": attention_mask.reshape(shape),
        "labels": _pad(labels, IGNORE_INDEX)[0].reshape(shape),
        "candidate_labels": _pad(every_label, IGNORE_INDEX)[0].reshape(shape),
        "mc_token_ids": attention_mask.sum(-1).reshape(shape[:2]) - 1,
        **_candidate_slots(examples),
    }


def _gold(example: dict) -> list[int]:
    """An example's gold candidate."""
    return example["candidates"][gold_index(example["candidates"])]


@dataclass
class PersonaCollator:
    """Pads a list of feature rows into tensors: packed rows (the fast path, ``packed=True``) or the classic
    [batch, candidates, length] layout (:func:`persona.model.dual_heads.collator_for` pairs it with the model's dual
    path).

    ``ids`` are the special tokens of the model's vocabulary (in the chat-template layout: its end of turn and pad).
    ``token_types=False`` leaves the token types (speaker embeddings) out, as a chat template must.
    ``wrap_candidates=False`` takes each candidate as a whole block whose first token is not scored (the chat-template
    layout's: the prompt's last token, then the reply up to its end-of-turn token), not as a reply to wrap in
    ``<speaker1> ... <eos>``.
    ``empty_prefix`` (the prefix of a conversation with no persona and no history, in the model's layout) adds the
    same candidates after that prefix, as a second batch of the same layout whose keys start with
    :data:`CONTEXT_FREE` (pointwise mutual information scores a candidate against its likelihood there).
    Examples that carry ``persona_swaps`` (their prefix after other personas, :mod:`persona.data.features`) add
    each turn's gold reply after each of those prefixes, one candidate a row, as a batch of the same layout whose
    keys start with :data:`PERSONA_SWAP` (LM labels on the gold reply), and :data:`SWAP_OWNER`, the turn of each row.
    Examples that carry a ``persona_free_prefix`` (their prefix without a persona) add each turn's gold reply after
    it, one row a turn in turn order, as a batch whose keys start with :data:`PERSONA_FREE`, and the gold reply
    alone after the turn's own prefix (no other candidate, no labels on the prefix) as one whose keys start with
    :data:`WITH_PERSONA`: the guidance teacher reads the two.
    """

    ids: SpecialIds
    packed: bool = True
    token_types: bool = True
    wrap_candidates: bool = True
    empty_prefix: tuple[int, ...] | None = None

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self._build(examples)
        if self.empty_prefix is not None:
            unconditioned = [{"prefix_ids": self.empty_prefix, "candidates": e["candidates"]} for e in examples]
            batch.update(
                (CONTEXT_FREE + name, value)
                for name, value in self._build(unconditioned).items()
                if name != "gold_copies"
            )
        batch.update(self._swapped(examples))
        batch.update(self._guidance_pair(examples))
        return {
            name: torch.from_numpy(np.ascontiguousarray(value))
            for name, value in batch.items()
            if self.token_types or not name.endswith("type_ids")
        }

    def _swapped(self, examples: list[dict]) -> dict[str, np.ndarray]:
        """The gold replies after other personas (see the class), or nothing where no example has any."""
        rows, owners = [], []
        for turn, example in enumerate(examples):
            gold = _gold(example)
            for prefix in example.get("persona_swaps") or ():
                rows.append({"prefix_ids": prefix, "candidates": [gold]})
                owners.append(turn)
        if not rows:
            return {}
        unscored = ("candidate_labels", "gold_copies")  # the gold reply is every row's one candidate and its label
        swapped = {PERSONA_SWAP + name: value for name, value in self._build(rows).items() if name not in unscored}
        return {**swapped, SWAP_OWNER: np.array(owners)}

    def _guidance_pair(self, examples: list[dict]) -> dict[str, np.ndarray]:
        """The gold replies after no persona and after their own (see the class), or nothing where no example has a
        persona-free prefix; a batch where only some have one is an error (its rows must pair with the batch's
        turns)."""
        having = sum(bool(example.get("persona_free_prefix")) for example in examples)
        if not having:
            return {}
        if having < len(examples):
            raise ValueError(f"{having} of the batch's {len(examples)} turns have a persona-free prefix: all or none")
        pair = {}
        for key, prefix in ((PERSONA_FREE, "persona_free_prefix"), (WITH_PERSONA, "prefix_ids")):
            rows = [{"prefix_ids": example[prefix], "candidates": [_gold(example)]} for example in examples]
            pair.update((key + name, value) for name, value in self._build(rows).items() if name != "gold_copies")
        return pair

    def _build(self, examples: list[dict]) -> dict[str, np.ndarray]:
        build = packed_batch if self.packed else classic_batch
        return build(examples, self.ids, self.wrap_candidates)
