"""Decoding that weighs the persona: classifier-free guidance (Sanchez et al., 2023) with the persona as the condition.

At each step a token's score is its log-probability after the persona and the conversation, plus ``weight`` times
the difference from its log-probability after the conversation alone (no persona):
``log p(t | persona, history) + weight * (log p(t | persona, history) - log p(t | history))``, transformers'
``guidance_scale`` of ``1 + weight``. A token the persona makes likelier than the conversation alone gains, a generic
one loses: the PMI ranking of whole replies (``pmi_weight``), token by token. Both decoding loops
(:mod:`~persona.model.decoding`, and persona-serve's batcher) run each guided row's prompt without the persona as a
paired row of a second :class:`~persona.model.running_batch.RunningBatch` (its own positions and, in the reference
layout, token types), fed the same tokens (:class:`GuidedBatch`); :func:`guided_scores` combines them.
"""

from __future__ import annotations

import torch

from persona.model.loading import LoadedModel
from persona.model.prefix_cache import PrefixCache
from persona.model.running_batch import running_batch


def guided_scores(scores: torch.Tensor, unconditional: torch.Tensor, weight: torch.Tensor | float) -> torch.Tensor:
    """``scores`` [rows, vocabulary] (after the persona and the conversation, processed up to the warpers) guided by
    the ``unconditional`` logits of the same rows (after the conversation alone), each row by its ``weight``."""
    conditional = scores.float().log_softmax(-1)
    alone = unconditional.float().log_softmax(-1)
    return conditional + weight * (conditional - alone)


class GuidedBatch:
    """A :class:`~persona.model.running_batch.RunningBatch` and, for its rows decoded with a persona weight, their
    paired rows without the persona in a second one (the same tokens fed to both), in row order; rows without a
    weight have no pair."""

    def __init__(self, loaded: LoadedModel, prefixes: PrefixCache | None = None):
        self.rows, self.pairs = running_batch(loaded, prefixes), running_batch(loaded, prefixes)
        self.guided: list[bool] = []  # whether each row has a pair

    def __len__(self) -> int:
        return len(self.rows)

    def join(self, prompts: list[dict], unconditional: list[dict | None]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Add rows for ``prompts`` and pairs for those whose ``unconditional`` prompt (without the persona) is given:
        the logits [len(prompts), vocabulary] of the token after each prompt, and after each pair's (see
        :func:`_beside`). Nothing joins if either batch fails to."""
        running = len(self.rows)
        logits = self.rows.join(prompts)
        paired = [row for row, prompt in enumerate(unconditional) if prompt is not None]
        try:
            alone = _beside(logits, paired, lambda: self.pairs.join([unconditional[row] for row in paired]))
        except Exception:
            self.rows.keep(list(range(running)))
            raise
        self.guided += [prompt is not None for prompt in unconditional]
        return logits, alone

    def step(self, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed each row (and its pair) its next token: the logits after each row and after each pair, as
        :meth:`join` gives them."""
        logits = self.rows.step(tokens)
        paired = [row for row, guided in enumerate(self.guided) if guided]
        return logits, _beside(logits, paired, lambda: self.pairs.step([tokens[row] for row in paired]))

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (indices in row order) and their pairs."""
        pair_of = {row: pair for pair, row in enumerate(row for row, guided in enumerate(self.guided) if guided)}
        self.pairs.keep([pair_of[row] for row in rows if row in pair_of])
        self.rows.keep(rows)
        self.guided = [self.guided[row] for row in rows]


def _beside(logits: torch.Tensor, paired: list[int], pair_logits) -> torch.Tensor | None:
    """The ``paired`` rows' pair logits (``pair_logits()``, in pair order) at those rows of a tensor shaped as
    ``logits`` (the other rows zeros), or None when no row has a pair (nothing to guide, nothing computed)."""
    if not paired:
        return None
    alone = torch.zeros_like(logits)
    alone[paired] = pair_logits()
    return alone
