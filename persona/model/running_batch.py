"""The rows being decoded together and their key/value cache, which rows join and leave between decoding steps.

Continuous batching as inference engines do it, on transformers' ``DynamicCache``: the prompts that join are run
together (left-padded, :meth:`RunningBatch.join`; only their last position through the LM head) and their cache is
left-padded into the running one (with a :class:`~persona.model.prefix_cache.PrefixCache`, a prompt that starts as
one read before reads only the rest, alone); each
:meth:`RunningBatch.step` feeds every row its next token; :meth:`RunningBatch.keep` drops the rows that ended and
the cache columns no row uses any more. A row's tokens always fill the last columns of the cache (every row gains
one column per step), so the cache is never wider than its longest row. Each row has its own positions, and in the
reference layout its own token type for the reply (the prompt's last, as ``generate`` extends types), so a row's
logits are those it would have alone, whoever shares the batch.

The cache is a full one for every layer (a plain ``DynamicCache``): a sliding-window model's attention masks the
keys beyond its window itself.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from persona.model.loading import LoadedModel
from persona.model.prefix_cache import Layers, PrefixCache, prompt_key


def left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids padded on the left into one [B, T] tensor, and its attention mask."""
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(row)) + list(row) for row in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], dtype=torch.long)
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """The position of each token of left-padded rows (their ``mask``): 0 at each row's first real token."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _layers(cache: DynamicCache) -> Layers:
    return [(layer.keys, layer.values) for layer in cache.layers]


class RunningBatch:
    """The cache, attention mask, next positions and reply token types of the rows being decoded, in row order."""

    def __init__(self, loaded: LoadedModel, prefixes: PrefixCache | None = None):
        self.loaded, self.prefixes = loaded, prefixes
        takes_keep = "logits_to_keep" in inspect.signature(loaded.model.forward).parameters
        self.last_logits_only = {"logits_to_keep": 1} if takes_keep else {}  # a prompt's other logits go unused
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
        float32 logits [len(prompts), vocabulary] of the token after each prompt. The same prompt given several times
        (the samples of one request) is read once; with a :class:`PrefixCache`, a prompt that starts as one read
        before reads only the rest, and every prompt read is kept there."""
        keys = [prompt_key(prompt, self.loaded.token_types) for prompt in prompts]
        first = {key: i for i, key in reversed(list(enumerate(keys)))}  # each distinct prompt's first place
        distinct = sorted(first.values())
        prefixes = self.prefixes
        found = {i: prefixes.longest(keys[i]) if prefixes is not None else (0, None) for i in distinct}
        read: dict[int, tuple[Layers, torch.Tensor, torch.Tensor]] = {}
        fresh = [i for i in distinct if not found[i][0]]
        if fresh:
            layers, mask, logits = self._read_together([prompts[i] for i in fresh])
            for row, i in enumerate(fresh):
                read[i] = ([(k[row : row + 1], v[row : row + 1]) for k, v in layers], mask[row : row + 1], logits[row])
        for i in distinct:
            if found[i][0]:
                read[i] = self._read_after(prompts[i], *found[i])
        if prefixes is not None:
            for i in distinct:
                layers, mask, _ = read[i]
                length = int(mask.sum())
                prefixes.add(keys[i], [(k[:, :, -length:].clone(), v[:, :, -length:].clone()) for k, v in layers])
        rows = [read[first[key]] for key in keys]
        self._append([(layers, mask) for layers, mask, _ in rows])
        lengths = [len(p["input_ids"]) for p in prompts]
        self.positions = torch.cat([self.positions, torch.tensor(lengths, device=self.device)])
        reply_types = [p["token_type_ids"][-1] if self.loaded.token_types else 0 for p in prompts]
        self.types = torch.cat([self.types, torch.tensor(reply_types, dtype=torch.long, device=self.device)])
        return torch.stack([logits for _, _, logits in rows])

    def _read_together(self, prompts: list[dict]) -> tuple[Layers, torch.Tensor, torch.Tensor]:
        """One forward pass over ``prompts`` left-padded together: their keys and values, mask and last logits."""
        ids, mask = (t.to(self.device) for t in left_padded([p["input_ids"] for p in prompts], self.loaded.ids.pad))
        inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": _positions(mask)}
        if self.loaded.token_types:
            types = left_padded([p["token_type_ids"] for p in prompts], self.loaded.ids.pad)[0]
            inputs["token_type_ids"] = types.to(self.device)
        output = self.loaded.model(**inputs, cache=DynamicCache(), use_cache=True, **self.last_logits_only)
        return _layers(output.cache), mask, output.logits[:, -1].float()

    def _read_after(self, prompt: dict, shared: int, past: Layers) -> tuple[Layers, torch.Tensor, torch.Tensor]:
        """One prompt's tokens after its first ``shared``, whose keys and values are ``past``: the whole prompt's
        keys and values, mask and last logits."""
        length = len(prompt["input_ids"])
        inputs = {
            "input_ids": torch.tensor([prompt["input_ids"][shared:]], device=self.device),
            "attention_mask": torch.ones(1, length, dtype=torch.long, device=self.device),
            "position_ids": torch.arange(shared, length, device=self.device)[None],
        }
        if self.loaded.token_types:
            inputs["token_type_ids"] = torch.tensor([prompt["token_type_ids"][shared:]], device=self.device)
        cache = DynamicCache(ddp_cache_data=past)
        output = self.loaded.model(**inputs, cache=cache, use_cache=True, **self.last_logits_only)
        return _layers(output.cache), inputs["attention_mask"], output.logits[0, -1].float()

    def _append(self, blocks: list[tuple[Layers, torch.Tensor]]) -> None:
        """Put the keys, values and masks of ``blocks`` (rows that joined) after the running rows', all left-padded
        to the widest."""
        if self.cache is not None:
            blocks = [(_layers(self.cache), self.mask), *blocks]
        width = max(mask.shape[1] for _, mask in blocks)
        layers = [
            tuple(torch.cat([F.pad(t, (0, 0, width - t.shape[-2], 0)) for t in tensors]) for tensors in zip(*pairs))
            for pairs in zip(*(block_layers for block_layers, _ in blocks))
        ]
        self.cache = DynamicCache(ddp_cache_data=layers)
        self.mask = torch.cat([F.pad(mask, (width - mask.shape[1], 0)) for _, mask in blocks])

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
        index, start = self._keep_rows(rows)
        if not rows:
            self.cache = None
            return
        self.cache = DynamicCache(
            ddp_cache_data=[(k[index, :, start:], v[index, :, start:]) for k, v in _layers(self.cache)]
        )

    def _keep_rows(self, rows: list[int]) -> tuple[torch.Tensor, int]:
        """Keep ``rows`` of the mask, positions and reply types, the mask from the first column one of them uses:
        the rows' index and that column."""
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        mask = self.mask[index]
        used = mask.any(0).nonzero()
        start = int(used[0]) if len(used) else mask.shape[1]
        self.mask, self.positions, self.types = mask[:, start:], self.positions[index], self.types[index]
        return index, start


class RecomputingBatch(RunningBatch):
    """The rows of a model that keeps no key/value cache (openai-gpt): each step reads every row's whole sequence
    again, left-padded, as ``generate`` decodes such a model; rows join and leave as in :class:`RunningBatch`."""

    def __init__(self, loaded: LoadedModel):
        super().__init__(loaded)
        self.ids = torch.zeros(0, 0, dtype=torch.long, device=self.device)  # every row's tokens, left-padded
        self.all_types = torch.zeros(0, 0, dtype=torch.long, device=self.device)

    @torch.no_grad()
    def join(self, prompts: list[dict]) -> torch.Tensor:
        """Add rows for ``prompts``; the float32 logits of the token after each."""
        pad = self.loaded.ids.pad
        ids, mask = (t.to(self.device) for t in left_padded([p["input_ids"] for p in prompts], pad))
        types = torch.zeros_like(ids)  # kept beside the ids either way; fed only where the model reads types
        if self.loaded.token_types:
            types = left_padded([p["token_type_ids"] for p in prompts], pad)[0].to(self.device)
        logits = self._last_logits(ids, types, mask)
        width = max(self.mask.shape[1], mask.shape[1])
        self.ids, self.all_types, self.mask = (
            torch.cat([F.pad(old, (width - old.shape[1], 0)), F.pad(new, (width - new.shape[1], 0))])
            for old, new in ((self.ids, ids), (self.all_types, types), (self.mask, mask))
        )
        self.positions = torch.cat([self.positions, mask.sum(-1)])
        self.types = torch.cat([self.types, types[:, -1] if self.loaded.token_types else torch.zeros_like(ids[:, -1])])
        return logits

    @torch.no_grad()
    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed each row its next token; the float32 logits of the token after, from the whole sequences."""
        self.ids = torch.cat([self.ids, torch.tensor(tokens, device=self.device)[:, None]], dim=1)
        self.all_types = torch.cat([self.all_types, self.types[:, None]], dim=1)
        self.mask = F.pad(self.mask, (0, 1), value=1)
        self.positions = self.positions + 1
        return self._last_logits(self.ids, self.all_types, self.mask)

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` and the columns one of them uses."""
        if len(rows) == len(self):
            return
        index, start = self._keep_rows(rows)
        self.ids, self.all_types = self.ids[index, start:], self.all_types[index, start:]

    def _last_logits(self, ids: torch.Tensor, types: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": _positions(mask)}
        if self.loaded.token_types:
            inputs["token_type_ids"] = types
        return self.loaded.model(**inputs).logits[:, -1].float()


def running_batch(loaded: LoadedModel, prefixes: PrefixCache | None = None) -> RunningBatch:
    """The running batch of ``loaded``'s model: on its key/value cache (with ``prefixes`` if given), or reading the
    whole sequences at each step where the model keeps no cache (:class:`RecomputingBatch`, no prefixes)."""
    if "cache" in inspect.signature(loaded.model.forward).parameters:
        return RunningBatch(loaded, prefixes)
    return RecomputingBatch(loaded)
