"""The ConvAI2 metrics as ``evaluate`` modules shipped in the package (Hub metric scripts cannot be fetched
offline)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import evaluate
import numpy as np

_HERE = Path(__file__).resolve().parent
_DEFINITIONS = {
    "perplexity": "exp of the mean negative log-likelihood of the gold replies' tokens (lower is better)",
    "hits@k": "fraction of turns whose gold reply is among the k candidates the multiple-choice head scores highest "
    "(a candidate tied with the gold reply counts as above it)",
    "lm_hits@k": "fraction of turns whose gold reply is among the k candidates with the highest mean token "
    "log-likelihood "
    "(the reply and its end token, given the prompt): the language model's own ranking, without the multiple-choice "
    "head",
    "pmi_hits@k": "fraction of turns whose gold reply is among the k candidates with the highest pointwise mutual "
    "information with the conversation (mean token log-likelihood after the conversation minus a weight times after "
    "an empty one): the language model's ranking of what fits this conversation rather than what is likely anywhere",
    "persona_hits@k": "fraction of turns whose gold reply is likeliest (mean token log-likelihood) after its own "
    "persona among it and other personas of the split, the history the same (ties count as misses): whether the "
    "persona matters to the model",
    "persona_gain": "the gold reply's mean token log-likelihood after its own persona minus its mean after other "
    "personas, in nats per token",
    "persona_mc_hits@k": "persona_hits@1 by the multiple-choice head's score instead of the likelihood",
    "persona_mc_gain": "persona_gain in the multiple-choice head's score (logits)",
    "contradict@k": "on a contradiction set (every distractor contradicts the persona), the fraction of turns whose "
    "top-ranked candidate (by the multiple-choice head) contradicts the persona: 1 - hits@1",
    "lm_contradict@k": "contradict@1 by the candidates' mean token log-likelihood: 1 - lm_hits@1",
    "pmi_contradict@k": "contradict@1 by pointwise mutual information: 1 - pmi_hits@1",
    "consistency": "the C-score of generated replies: per reply, the sum over its persona's sentences of +1 (the "
    "reply entails it), 0 (neutral) or -1 (contradicts it) by an NLI model, averaged over replies",
    "contradiction_rate": "fraction of generated replies that contradict at least one sentence of their persona, by "
    "an NLI model",
    "generated_right": "on a contradiction set, the fraction of generated replies nearer (unigram F1) to the gold "
    "reply than to every candidate that contradicts the persona: replies that state the persona's own value",
    "generated_contradict": "on a contradiction set, the fraction of generated replies nearer (unigram F1) to a "
    "candidate that contradicts the persona than to the gold reply: replies that state another value of the fact "
    "asked about",
    "drift_first_right": "persona drift: the fraction of persona questions, asked at a conversation's first turn, "
    "whose answer names (is strictly nearest, by unigram F1, to) the persona's own value",
    "drift_kept": "persona drift: of the questions whose first answer names a value, the fraction whose answer to the "
    "same question after six turns of small talk names the same value",
    "drift_changed": "persona drift: of the questions whose first answer names a value, the fraction whose answer "
    "after six turns of small talk names another value",
    "ended": "fraction of generated replies that ended by themselves (their end token before the length limit)",
    "f1": "unigram F1 between the generated and the gold reply after ConvAI2's normalisation (mean over turns)",
}


def metric_definition(name: str) -> str:
    """What a reported metric measures, in words for the reader of a report or a model card (``hits@5``: k = 5)."""
    kind, _, k = name.partition("@")
    return _DEFINITIONS[f"{kind}@k"].replace("the k candidates", f"the {k} candidates") if k else _DEFINITIONS[name]


def gold_ranks(scores, gold):
    """The rank of each turn's gold candidate (0 = best): how many *other* candidates score at least as high.

    ``scores`` [turns, candidates] (a NumPy array or a torch tensor; slots that pad a turn hold -inf or the
    dtype's minimum), ``gold`` [turns] the gold index. A candidate tied with the gold reply counts as ranked
    above it, so a scorer that gives every candidate the same score never gets credit.
    """
    gold_scores = scores[range(len(gold)), gold]
    return (scores >= gold_scores[:, None]).sum(-1) - 1


def hits_from_ranks(ranks: Iterable[int], ks: Iterable[int]) -> dict[str, float]:
    """``hits@k`` for each k: the fraction of turns whose gold reply's rank (0 = best) is below k."""
    ranks = np.asarray(list(ranks))
    return {f"hits@{k}": float((ranks < k).mean()) if len(ranks) else 0.0 for k in ks}


def load_metric(name: str) -> evaluate.EvaluationModule:
    """``convai2_f1`` or ``hits_at_k``, loaded with ``evaluate.load`` from this package."""
    return evaluate.load(str(_HERE / name))


def f1_to_candidates(f1_metric, answers: list[str], candidates: list[list[str]]) -> list[list[float]]:
    """Each answer's unigram F1 (``f1_metric``: ``convai2_f1``) to each of its own candidates, in one computation."""
    pairs = [(answer, candidate) for answer, own in zip(answers, candidates) for candidate in own]
    scores = f1_metric.compute(predictions=[a for a, _ in pairs], references=[c for _, c in pairs])["f1_per_example"]
    rows, start = [], 0
    for own in candidates:
        rows.append(scores[start : start + len(own)])
        start += len(own)
    return rows
