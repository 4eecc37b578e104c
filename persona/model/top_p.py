"""Top-p (nucleus) filtering without sorting the vocabulary: transformers' ``TopPLogitsWarper`` keeps a row's best
tokens while the probability of the tokens ranked above each is under ``top_p``, and finds them by sorting every
score of the row (49,152 for SmolLM2: most of the time a sampled token took to choose). A trained model's nucleus is
small (the offline recipe's model at temperature 0.7 over 1,028 positions of text: 3 tokens at the median, 142 at
the 99th percentile), so :class:`TopPFromBest` reads each row's ``best`` highest scores (``torch.topk``) and keeps
the same tokens from them, with their scores; a row whose nucleus reaches past them (a flat distribution, or scores
that are not finite) is filtered by the full sort, as transformers does. The probabilities are summed from the top
instead of from the bottom, so a token whose rank sits within float rounding of ``top_p`` could be kept by one and
not the other; on 1,600 random rows of 49,152 scores the two kept the same tokens in every row.
"""

from __future__ import annotations

import torch
from transformers import TopPLogitsWarper


class TopPFromBest(TopPLogitsWarper):
    """``TopPLogitsWarper`` (the same tokens kept, the others set to ``filter_value``), computed from each row's
    ``best`` highest scores where the nucleus lies within them, by the full sort elsewhere."""

    def __init__(self, top_p: float, best: int = 512, **options):
        super().__init__(top_p, **options)
        self.best = best

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        processed, within = self.from_best(scores)
        if not within.all():
            outside = (~within).nonzero()[:, 0]
            processed[outside] = super().__call__(input_ids[outside], scores[outside])
        return processed

    def from_best(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The filtered scores of the rows whose nucleus lies within their ``best`` highest scores, and which rows
        those are (the others' filtered scores are not computed: every score is ``filter_value`` there)."""
        best, order = scores.topk(min(self.best, scores.shape[-1]), dim=-1)  # highest first
        total = scores.logsumexp(-1, keepdim=True)
        probs = (best - total).exp()
        keep = probs.cumsum(-1) - probs < self.top_p  # the mass of the tokens ranked above each is under top_p
        keep[:, : self.min_tokens_to_keep] = True
        within = ~keep[:, -1] & torch.isfinite(total[:, 0])  # its last best token is cut, so are all after it
        processed = torch.full_like(scores, self.filter_value)
        processed.scatter_(1, order, best.masked_fill(~keep, self.filter_value))
        return processed, within
