"""Prompts read before, kept as keys and values, so that a prompt that starts as one of them reads only what follows.

A chat's next request repeats its last one and adds to it: the persona, the history, the generation prompt, then
the bot's reply and the partner's new utterance. :class:`PrefixCache` keeps the keys and values of the prompts a
running batch has read (``max_bytes`` of them, the least recently used dropped first); a joining prompt looks up the
longest one it starts with and the model reads only the rest (automatic prefix caching, as vLLM and llama-server do
it). A prompt's tokens key it with their token types where the model reads them (a speaker embedding changes every
key after it). Its logits are those of reading the whole prompt, up to float rounding.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # each layer's keys and values, [1, heads, positions, head size]


def prompt_key(prompt: dict, token_types: bool) -> tuple:
    """The tokens that decide a prompt's keys and values: its ids, with their types where the model reads them."""
    if token_types:
        return tuple(zip(prompt["input_ids"], prompt["token_type_ids"]))
    return tuple(prompt["input_ids"])


class PrefixCache:
    """Keys and values of prompts, by their tokens (:func:`prompt_key`), at most ``max_bytes`` of them; ``read`` and
    ``reused`` count the prompt tokens looked up and those found."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.entries: OrderedDict[tuple, tuple[Layers, int]] = OrderedDict()
        self.read = self.reused = 0

    def longest(self, key: tuple) -> tuple[int, Layers | None]:
        """How many of ``key``'s first tokens a kept prompt shares, at most all but the last (whose logits the caller
        needs), and the keys and values of those tokens (None when none shares any)."""
        best, found = 0, None
        for kept in self.entries:
            shared = min(len(os.path.commonprefix([kept, key])), len(key) - 1)
            if shared > best:
                best, found = shared, kept
        self.read += len(key)
        if found is None:
            return 0, None
        self.entries.move_to_end(found)
        self.reused += best
        return best, [(keys[:, :, :best], values[:, :, :best]) for keys, values in self.entries[found][0]]

    def add(self, key: tuple, layers: Layers) -> None:
        """Keep ``layers``, the keys and values of the prompt ``key`` (their own tensors: nothing else holds on to
        them), dropping the least recently used prompts to make room, and the kept prompts ``key`` starts with (a
        lookup that would find them finds ``key`` as far)."""
        size = sum(keys.nbytes + values.nbytes for keys, values in layers)
        if key in self.entries or size > self.max_bytes:
            return
        for kept in [kept for kept in self.entries if key[: len(kept)] == kept]:
            self._drop(kept)
        while self.bytes + size > self.max_bytes:
            self._drop(next(iter(self.entries)))
        self.entries[key] = (layers, size)
        self.bytes += size

    def _drop(self, key: tuple) -> None:
        _, size = self.entries.pop(key)
        self.bytes -= size
