"""Batches with per-batch dynamic padding, in the shared-prefix form or the classic [batch, candidates, length] one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from persona.data.layout import IGNORE_INDEX, build_candidate, token_types
from persona.special_tokens import SpecialIds, special_ids

LAYOUTS = ("shared_prefix", "classic")


def _pad(rows: list[list[int]], value: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(map(len, rows))
    array = np.full((len(rows), width), value, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        array[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return array, mask


def shared_prefix_batch(examples: list[dict], ids: SpecialIds) -> dict[str, np.ndarray]:
    """The compact batch: each prefix once, each candidate ``<speaker2> reply <eos>`` beside it.

    Keys: ``prefix_ids``/``prefix_type_ids``/``prefix_mask`` [B, Lp]; ``candidate_ids``/``candidate_type_ids``/
    ``candidate_mask``/``labels`` [B, C, Lc]
    (labels on the gold candidate only); ``mc_token_ids`` [B, C] (the ``<eos>`` index inside each
    candidate); ``candidate_valid`` [B, C] (False for slots padding a turn with fewer candidates);
    ``mc_labels`` [B] (the gold index: the last real candidate).
    """
    prefix_ids, prefix_mask = _pad([e["prefix_ids"] for e in examples], ids.pad)
    count = max(len(e["candidates"]) for e in examples)
    filler = [[]]  # a padding slot: "<speaker2> <eos>", masked out of the classification
    replies = [e["candidates"] + filler * (count - len(e["candidates"])) for e in examples]
    flat, flat_mask = _pad([build_candidate(r, ids) for rs in replies for r in rs], ids.pad)
    batch, width = len(examples), flat.shape[1]
    candidate_ids, candidate_mask = flat.reshape(batch, count, width), flat_mask.reshape(batch, count, width)
    labels = np.full_like(candidate_ids, IGNORE_INDEX)
    gold = np.array([len(e["candidates"]) - 1 for e in examples])
    rows = np.arange(batch)
    labels[rows, gold, 1:] = np.where(candidate_mask[rows, gold, 1:] == 1, candidate_ids[rows, gold, 1:], IGNORE_INDEX)
    valid = np.arange(count)[None, :] < np.array([len(e["candidates"]) for e in examples])[:, None]
    return {
        "prefix_ids": prefix_ids,
        "prefix_type_ids": np.where(prefix_mask == 1, token_types(prefix_ids, ids), ids.pad),
        "prefix_mask": prefix_mask,
        "candidate_ids": candidate_ids,
        "candidate_type_ids": np.where(candidate_mask == 1, ids.speaker2, ids.pad),
        "candidate_mask": candidate_mask,
        "labels": labels,
        "mc_token_ids": candidate_mask.sum(-1) - 1,
        "candidate_valid": valid,
        "mc_labels": gold,
    }


def classic_batch(shared: dict[str, np.ndarray], ids: SpecialIds) -> dict[str, np.ndarray]:
    """The classic layout: every candidate as the full sequence prefix + reply, [B, C, L], right-padded."""
    prefix_lengths = shared["prefix_mask"].sum(-1)
    reply_lengths = shared["candidate_mask"].sum(-1)
    batch, count, _ = shared["candidate_ids"].shape
    width = int((prefix_lengths[:, None] + reply_lengths).max())
    input_ids = np.full((batch, count, width), ids.pad, dtype=np.int64)
    labels = np.full_like(input_ids, IGNORE_INDEX)
    attention_mask = np.zeros_like(input_ids)
    for b in range(batch):
        p = prefix_lengths[b]
        input_ids[b, :, :p] = shared["prefix_ids"][b, :p]
        attention_mask[b, :, :p] = 1
        for c in range(count):
            r = reply_lengths[b, c]
            input_ids[b, c, p : p + r] = shared["candidate_ids"][b, c, :r]
            labels[b, c, p : p + r] = shared["labels"][b, c, :r]
            attention_mask[b, c, p : p + r] = 1
    types = np.where(attention_mask == 1, token_types(input_ids, ids), ids.pad)
    return {
        "input_ids": input_ids,
        "token_type_ids": types,
        "attention_mask": attention_mask,
        "labels": labels,
        "mc_token_ids": prefix_lengths[:, None] + reply_lengths - 1,
        "candidate_valid": shared["candidate_valid"],
        "mc_labels": shared["mc_labels"],
    }


@dataclass
class PersonaCollator:
    """Pads a list of feature rows into tensors; ``layout`` is ``shared_prefix`` (fast path) or ``classic``.

    ``token_types=False`` leaves the token types (speaker embeddings) out, as a chat template must.
    """

    tokenizer: object
    layout: str = "shared_prefix"
    token_types: bool = True

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {self.layout!r}")
        self.ids = special_ids(self.tokenizer)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = shared_prefix_batch(examples, self.ids)
        if self.layout == "classic":
            batch = classic_batch(batch, self.ids)
        return {
            name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in batch.items() if self.token_types or not name.endswith("type_ids")
        }
