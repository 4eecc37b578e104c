"""Candidates scored outside training: each example's candidates (stored features: ``prefix_ids`` and
``candidates``) through the model's dual path, as the Trainer scores a turn's candidates in training and evaluation
(the same layout, collator and path, the likelihood prior included).

Two uses: ``rerank_samples`` (sampled replies ranked by the trained multiple-choice score, the best one the answer;
ties go to the first sampled) and persona use in persona-eval (a gold reply scored after its own persona and after
others).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from persona.errors import ConfigError
from persona.model.dual_heads import choose_dual_path, collator_for
from persona.model.loading import LoadedModel


@dataclass
class CandidateScores:
    """Per example, per candidate: the multiple-choice score (``mc``) and the mean token log-likelihood (``lm``, in
    nats: the reply and its end token)."""

    mc: list[list[float]]
    lm: list[list[float]]


@torch.no_grad()
def score_candidates(loaded: LoadedModel, examples: list[dict], batch_size: int = 16) -> CandidateScores:
    """The :class:`CandidateScores` of ``examples``, ``batch_size`` examples a forward pass."""
    model = loaded.model
    path = choose_dual_path(model, "packed")
    collate = collator_for(
        path,
        loaded.ids,
        token_types=loaded.token_types,
        wrap_candidates=loaded.layout.wraps_candidates,
        empty_prefix=loaded.layout.empty_prefix() if loaded.facts.prior_needs_context_free else None,
    )
    device = next(model.parameters()).device
    scores = CandidateScores([], [])
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = collate(chunk)
        output = model(**{name: value.to(device) for name, value in batch.items()}, dual_path=path)
        likelihoods = output.mean_log_likelihood()
        for row, example in enumerate(chunk):
            count = len(example["candidates"])
            scores.mc.append(output.mc_logits[row, :count].float().tolist())
            scores.lm.append(likelihoods[row, :count].float().tolist())
    return scores


def check_rerankable(loaded: LoadedModel) -> None:
    """A :class:`ConfigError` for a model whose multiple-choice head persona never trained (a prompted model)."""
    if loaded.prompted:
        raise ConfigError(
            f"rerank_samples needs a trained multiple-choice head; {loaded.name} is a prompted model",
            where="rerank_samples",
            fix="drop rerank_samples (or set it to 1), or rerank with a model trained by persona-train.",
        )


def reply_scores(loaded: LoadedModel, prompt_ids: list[int], replies: list[list[int]]) -> list[float]:
    """The multiple-choice score of each reply (token ids, its end token excluded) generated after ``prompt_ids``
    (the prompt of :func:`~persona.model.generation.prompt_inputs`)."""
    check_rerankable(loaded)
    return score_candidates(loaded, [loaded.layout.replies_as_turn(prompt_ids, replies)]).mc[0]


def best_reply(loaded: LoadedModel, prompt_ids: list[int], replies: list[list[int]]) -> int:
    """The index of the reply the multiple-choice head ranks first (the first of equals)."""
    scores = reply_scores(loaded, prompt_ids, replies)
    return max(range(len(scores)), key=lambda index: (scores[index], -index))
