"""Unigram F1 between a generated reply and the gold reply(s), with ParlAI's ConvAI2 normalisation."""

from __future__ import annotations

import re
from collections import Counter

import datasets
import evaluate

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = re.compile(r"[!\"#$%&()*+,\-./:;<=>?@\[\]\\^`{|}~_']")

_DESCRIPTION = """ConvAI2's F1: lowercase; replace each character of !"#$%&()*+,-./:;<=>?@[\\]^`{|}~_' by a
space; replace the words a, an, the by a space; split on white space; unigram precision and recall of
the prediction against each reference; the F1 with the best reference; the mean over examples."""

_KWARGS = """
Args:
    predictions: list of generated replies (str).
    references: list of gold replies, one str or a list of str per prediction.
Returns:
    f1: mean F1 in [0, 1]; f1_per_example: the F1 of each prediction.
Example:
    >>> f1 = evaluate.load("persona/metrics/convai2_f1")
    >>> f1.compute(predictions=["I like the cats!"], references=[["i like dogs"]])["f1"]
    0.6666666666666666
"""


def normalize(text: str) -> list[str]:
    """ParlAI's ConvAI2 normalisation, as tokens."""
    text = _PUNCTUATION.sub(" ", text.lower())
    return _ARTICLES.sub(" ", text).split()


def f1_score(prediction: str, reference: str) -> float:
    """Unigram F1 of two normalised strings (0 when either is empty)."""
    predicted, gold = normalize(prediction), normalize(reference)
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Convai2F1(evaluate.Metric):
    """The ConvAI2 F1 metric."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Dinan et al., The Second Conversational Intelligence Challenge (ConvAI2), 2019.",
            inputs_description=_KWARGS,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
        )

    def _compute(self, predictions, references):
        scores = [
            max(f1_score(p, r) for r in ([refs] if isinstance(refs, str) else refs))
            for p, refs in zip(predictions, references)
        ]
        return {"f1": sum(scores) / len(scores) if scores else 0.0, "f1_per_example": scores}
