"""How the rows of a running batch pick their next tokens: the logits processors ``generate`` applies for each row's
:class:`~persona.model.generation.DecodingArguments`, the persona's guidance, each row's own random generator, and
the log-probabilities a client asked for.

Rows of one batch decode with their own settings, in ``generate``'s order. The processors that read a row's ids
(repetition and OpenAI's penalties, the fewest new tokens) run per row over its own ids (prompt and reply, no
padding); the suppressed tokens (every special token but the end token, the same for every row) once for all
rows; then, for a row with a ``persona_weight``, the guidance by the persona
(:mod:`~persona.model.persona_guidance`, from the logits of its paired row without the persona); then those that
read only the scores (temperature, top-k, top-p: :class:`~persona.model.top_p.TopPFromBest`, transformers' filter
without a sort of the vocabulary) once for all the rows that share their settings, as ``generate`` runs them over a
batch. A seeded row draws from its own ``torch.Generator``, so a seeded reply does not depend on the
rows beside it: it is what ``generate`` draws after ``torch.manual_seed(seed)`` for a batch of one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
)

from persona.model.generation import DecodingArguments
from persona.model.loading import LoadedModel
from persona.model.persona_guidance import guided_scores
from persona.model.top_p import TopPFromBest


@dataclass
class TokenLogprob:
    """A generated token's log-probability under the model (before any processor), and the ``top`` most likely
    tokens' ids and log-probabilities."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


class MinNewTokens(MinNewTokensLengthLogitsProcessor):
    """transformers' processor that bars the end token while a reply is shorter than ``min_new_tokens``, returning
    the scores untouched (no copy, no mask) once it is long enough."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] - self.prompt_length_to_skip >= self.min_new_tokens:
            return scores
        return super().__call__(input_ids, scores)


class RowDecoder:
    """The token choice of one row (see :func:`choose_tokens`): its ids so far, the processors over them (those
    that read the ids in ``own``, the suppressed tokens in ``suppress``, the guidance's ``persona_weight``, the
    others in ``shared``, which rows with the same ``shared_key`` run together), its generator (``seed``; the global
    one without), and ``top_logprobs`` (None: no log-probabilities; 0 or more: the chosen token's and that many
    alternatives)."""

    def __init__(
        self,
        decoding: DecodingArguments,
        loaded: LoadedModel,
        prompt_ids: list[int],
        *,
        seed: int | None = None,
        top_logprobs: int | None = None,
    ):
        config = decoding.generation_config(loaded)
        self.ids = torch.tensor([prompt_ids], dtype=torch.long)
        self.do_sample, self.top_logprobs = config.do_sample, top_logprobs
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.own = LogitsProcessorList()
        if config.repetition_penalty not in (None, 1.0):
            self.own.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        if config.min_new_tokens:
            self.own.append(MinNewTokens(len(prompt_ids), config.min_new_tokens, config.eos_token_id))
        self.own.extend(decoding.logits_processors(len(prompt_ids)))
        self.suppress = SuppressTokensLogitsProcessor(config.suppress_tokens)
        self.persona_weight = decoding.persona_weight
        self.shared = LogitsProcessorList()
        self.shared_key: tuple = (False,)
        if config.do_sample:
            self.shared_key = (True, config.temperature, config.top_k, config.top_p)
            if config.temperature != 1.0:
                self.shared.append(TemperatureLogitsWarper(config.temperature))
            if config.top_k:
                self.shared.append(TopKLogitsWarper(config.top_k))
            if config.top_p < 1.0:
                self.shared.append(TopPFromBest(config.top_p))


class NonFiniteScores(ArithmeticError):
    """A row's next-token distribution is not a distribution (NaN or infinite scores, or no token left): the model's
    logits, not the request's settings, which the request model bounds so that this cannot happen."""


@dataclass
class Choice:
    """A row's next token and its log-probability (where asked for), or the ``error`` that ended the row."""

    token: int = -1
    logprob: TokenLogprob | None = None
    error: Exception | None = None


def _logprob(token: int, logits: torch.Tensor, top: int) -> TokenLogprob:
    logprobs = logits.log_softmax(-1)
    best = logprobs.topk(top) if top else None
    alternatives = list(zip(best.indices.tolist(), best.values.tolist())) if best is not None else []
    return TokenLogprob(token, float(logprobs[token]), alternatives)


def _group_tokens(decoders: list[RowDecoder], scores: torch.Tensor) -> torch.Tensor:
    """The next tokens of rows that share their score processors (``scores``: theirs after their own processors).
    Every row's distribution is checked before any row draws, so that a failure draws nothing."""
    first = decoders[0]
    scores = first.shared(torch.zeros(len(decoders), 0, dtype=torch.long), scores)  # they read no ids
    if not first.do_sample:
        if torch.isnan(scores).any():
            raise NonFiniteScores("the model's next-token scores are NaN")
        return scores.argmax(-1)
    probs = scores.softmax(-1)
    if not (torch.isfinite(probs).all() and (probs.sum(-1) > 0).all()):
        raise NonFiniteScores("the sampling distribution is not finite")
    tokens = torch.zeros(len(decoders), dtype=torch.long)
    unseeded = [i for i, decoder in enumerate(decoders) if decoder.generator is None]
    if unseeded:
        tokens[unseeded] = torch.multinomial(probs[unseeded], 1)[:, 0]
    for i, decoder in enumerate(decoders):
        if decoder.generator is not None:
            tokens[i] = torch.multinomial(probs[i : i + 1], 1, generator=decoder.generator)[0, 0]
    return tokens


def choose_tokens(
    decoders: list[RowDecoder], logits: torch.Tensor, unconditional: torch.Tensor | None = None
) -> list[Choice]:
    """The next token of each row from the rows' float32 ``logits`` [rows, vocabulary] (and its log-probability
    where asked for), guided where a row has a ``persona_weight`` by its row of ``unconditional`` (the logits after
    the conversation alone; rows without a weight may hold anything there, and it is None when no row has one); each
    row's ids grow by its token. A row
    whose processors or draw fail gets its error instead, and the other rows their tokens: rows that share
    processors are chosen together, and one by one when that fails, so that the failure is pinned on its row."""
    logits = logits.cpu()
    scores = logits.clone()
    choices = [Choice() for _ in decoders]
    for row, decoder in enumerate(decoders):
        try:
            if decoder.own:
                scores[row : row + 1] = decoder.own(decoder.ids, scores[row : row + 1])
        except Exception as error:
            choices[row].error = error
    scores = decoders[0].suppress(decoders[0].ids, scores)  # the same tokens for every row of a model
    guided = [row for row, decoder in enumerate(decoders) if decoder.persona_weight]
    if guided:
        weights = torch.tensor([decoders[row].persona_weight for row in guided])[:, None]
        scores[guided] = guided_scores(scores[guided], unconditional.cpu()[guided], weights)
    groups: dict[tuple, list[int]] = {}
    for row, decoder in enumerate(decoders):
        if choices[row].error is None:
            groups.setdefault(decoder.shared_key, []).append(row)
    tokens = torch.zeros(len(decoders), dtype=torch.long)
    for rows in groups.values():
        try:
            tokens[rows] = _group_tokens([decoders[row] for row in rows], scores[rows])
        except Exception:
            for row in rows:
                try:
                    tokens[row] = _group_tokens([decoders[row]], scores[row : row + 1])[0]
                except Exception as error:
                    choices[row].error = error
    for row, decoder in enumerate(decoders):
        if choices[row].error is not None:
            continue
        token = int(tokens[row])
        decoder.ids = torch.cat([decoder.ids, tokens[row : row + 1, None]], dim=1)
        top = decoder.top_logprobs
        choices[row].token = token
        choices[row].logprob = None if top is None else _logprob(token, logits[row], top)
    return choices
