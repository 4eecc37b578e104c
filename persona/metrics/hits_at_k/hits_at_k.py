"""hits@k: the fraction of turns whose gold reply is among the k best-scored candidates."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

from persona.metrics import gold_ranks, hits_from_ranks

_DESCRIPTION = """hits@k over candidate scores: for each turn, the gold candidate's rank is the number of other
candidates scored at least as high (a tie counts against the gold reply); hits@k is the fraction of turns
whose rank is below k. ConvAI2 ranks 20 candidates per turn and reports hits@1. persona-eval and the
trainer rank with the same function (persona.metrics.gold_ranks)."""

_KWARGS = """
Args:
    predictions: per turn, the list of candidate scores (higher is better).
    references: per turn, the index of the gold candidate.
    k: an int or a list of ints (default [1]).
Returns:
    hits@K for each k, in [0, 1].
Example:
    >>> hits = evaluate.load("persona/metrics/hits_at_k")
    >>> hits.compute(predictions=[[0.1, 0.9], [0.8, 0.2]], references=[1, 1], k=[1, 2])
    {'hits@1': 0.5, 'hits@2': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class HitsAtK(evaluate.Metric):
    """The hits@k metric."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k=(1,)):
        width = max(map(len, predictions), default=0)
        scores = np.full((len(predictions), width), -np.inf)
        for row, turn in enumerate(predictions):  # turns may have different numbers of candidates
            scores[row, : len(turn)] = turn
        return hits_from_ranks(gold_ranks(scores, np.asarray(references, dtype=int)), [k] if isinstance(k, int) else k)
