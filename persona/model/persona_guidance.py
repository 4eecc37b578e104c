"""Decoding that weighs the persona: classifier-free guidance (Sanchez et al., 2023) with the persona as the condition.

At each step a token's score is its log-probability after the persona and the conversation, plus ``weight`` times
the difference from its log-probability after the conversation alone (no persona):
``log p(t | persona, history) + weight * (log p(t | persona, history) - log p(t | history))``, transformers'
``guidance_scale`` of ``1 + weight``. A token the persona makes likelier than the conversation alone gains, a generic
one loses: the PMI ranking of whole replies (``pmi_weight``), token by token. The conversation-alone prompts run as
their own :class:`~persona.model.running_batch.RunningBatch` beside ``generate``'s (their own positions and, in the
reference layout, token types), one row per generated row, fed the same tokens.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from persona.model.loading import LoadedModel
from persona.model.running_batch import RunningBatch


class PersonaGuidance(LogitsProcessor):
    """Scores guided by the persona (see the module): ``unconditional`` holds the prompt without the persona of each
    row ``generate`` decodes (:func:`~persona.model.generation.prompt_inputs` of an empty persona), in row order."""

    def __init__(self, loaded: LoadedModel, unconditional: list[dict], weight: float):
        self.batch, self.unconditional, self.weight = RunningBatch(loaded), unconditional, weight
        self.started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.started:
            logits = self.batch.step(input_ids[:, -1].tolist())
        else:
            logits, self.started = self.batch.join(self.unconditional), True
        guided = scores.float().log_softmax(-1)
        alone = logits.to(guided.device).log_softmax(-1)
        return (guided + self.weight * (guided - alone)).to(scores.dtype)
