"""The rows being decoded together and their key/value cache, which rows join and leave between decoding steps.

Continuous batching as inference engines do it, on transformers' ``DynamicCache``: the prompts that join are run
together (left-padded, :meth:`RunningBatch.join`) and their cache is left-padded into the running one; each
:meth:`RunningBatch.step` feeds every row its next token; :meth:`RunningBatch.keep` drops the rows that ended and
the cache columns no row uses any more. A row's tokens always fill the last columns of the cache (every row gains
one column per step), so the cache is never wider than its longest row. Each row has its own positions, and in the
reference layout its own token type for the reply (the prompt's last, as ``generate`` extends types), so a row's
logits are those it would have alone, whoever shares the batch.

The cache is a full one for every layer (a plain ``DynamicCache``): a sliding-window model's attention masks the
keys beyond its window itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from persona.model.loading import LoadedModel


def left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids padded on the left into one [B, T] tensor, and its attention mask."""
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(row)) + list(row) for row in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], dtype=torch.long)
    return ids, mask


def _left_padded_cache(layers: list[tuple[torch.Tensor, torch.Tensor]], width: int) -> list[tuple]:
    """Each layer's keys and values padded with zeros on the left to ``width`` positions."""
    return [tuple(F.pad(t, (0, 0, width - t.shape[-2], 0)) for t in layer) for layer in layers]


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


class RunningBatch:
    """The cache, attention mask, next positions and reply token types of the rows being decoded, in row order."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.device = next(loaded.model.parameters()).device
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)  # [rows, cached positions]
        self.positions = torch.zeros(0, dtype=torch.long, device=self.device)  # each row's next position
        self.types = torch.zeros(0, dtype=torch.long, device=self.device)  # each row's reply token type

    def __len__(self) -> int:
        return self.mask.shape[0]

    @torch.no_grad()
    def join(self, prompts: list[dict]) -> torch.Tensor:
        """Add rows for ``prompts`` (of :func:`~persona.model.generation.prompt_inputs`), after the running ones; the
        float32 logits [len(prompts), vocabulary] of the token after each prompt."""
        ids, prompt_mask = (
            t.to(self.device) for t in left_padded([p["input_ids"] for p in prompts], self.loaded.ids.pad)
        )
        inputs = {
            "input_ids": ids,
            "attention_mask": prompt_mask,
            "position_ids": (prompt_mask.cumsum(-1) - 1).clamp(min=0),
        }
        if self.loaded.token_types:
            types = left_padded([p["token_type_ids"] for p in prompts], self.loaded.ids.pad)[0]
            inputs["token_type_ids"] = types.to(self.device)
        output = self.loaded.model(**inputs, cache=DynamicCache(), use_cache=True)
        joined, mask = _layers(output.cache), prompt_mask
        if self.cache is not None:
            width = max(self.mask.shape[1], prompt_mask.shape[1])
            old, joined = _left_padded_cache(_layers(self.cache), width), _left_padded_cache(joined, width)
            joined = [tuple(torch.cat(pair) for pair in zip(o, n)) for o, n in zip(old, joined)]
            mask = torch.cat([F.pad(m, (width - m.shape[1], 0)) for m in (self.mask, prompt_mask)])
        self.cache, self.mask = DynamicCache(ddp_cache_data=joined), mask
        self.positions = torch.cat([self.positions, prompt_mask.sum(-1)])
        reply_types = inputs["token_type_ids"][:, -1] if self.loaded.token_types else torch.zeros_like(ids[:, -1])
        self.types = torch.cat([self.types, reply_types])
        return output.logits[:, -1].float()

    @torch.no_grad()
    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed each row its next token (in row order); the float32 logits [rows, vocabulary] of the token after."""
        self.mask = F.pad(self.mask, (0, 1), value=1)
        inputs = {
            "input_ids": torch.tensor(tokens, device=self.device)[:, None],
            "attention_mask": self.mask,
            "position_ids": self.positions[:, None],
        }
        if self.loaded.token_types:
            inputs["token_type_ids"] = self.types[:, None]
        output = self.loaded.model(**inputs, cache=self.cache, use_cache=True)
        self.cache = output.cache
        self.positions = self.positions + 1
        return output.logits[:, -1].float()

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (indices in row order), and only the cache columns one of them uses."""
        if len(rows) == len(self):
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        mask = self.mask[index]
        used = mask.any(0).nonzero()
        start = int(used[0]) if len(used) else mask.shape[1]
        self.mask, self.positions, self.types = mask[:, start:], self.positions[index], self.types[index]
        if not rows:
            self.cache = None
            return
        self.cache = DynamicCache(
            ddp_cache_data=[(k[index, :, start:], v[index, :, start:]) for k, v in _layers(self.cache)]
        )
