"""Token choice without a sort of the vocabulary: top-p from each row's best scores keeps what transformers'
``TopPLogitsWarper`` keeps, on peaked rows (read from their best scores) and flat ones (the full sort); the fewest
new tokens bar the end token as transformers' processor does, and cost nothing once the reply is long enough."""

from __future__ import annotations

import pytest
import torch
from transformers import MinNewTokensLengthLogitsProcessor, TopPLogitsWarper

from persona.model.generation import DecodingArguments
from persona.model.row_decoding import MinNewTokens, RowDecoder, choose_tokens
from persona.model.top_p import TopPFromBest
from tests.conftest import as_loaded

VOCABULARY = 5000


def mixed_rows() -> torch.Tensor:
    """Six rows of scores: four peaked (a few dozen likely tokens, one with special tokens at -inf), two flat."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(6, VOCABULARY, generator=generator)
    scores[:4] *= 6.0
    scores[:4, :40] += 10.0
    scores[1, :5] = -float("inf")
    return scores


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.99])
@pytest.mark.parametrize("keep", [1, 3])
def test_top_p_from_the_best_scores_keeps_what_transformers_keeps(top_p, keep):
    scores = mixed_rows()
    no_ids = torch.zeros(len(scores), 0, dtype=torch.long)
    expected = TopPLogitsWarper(top_p, min_tokens_to_keep=keep)(no_ids, scores)
    assert torch.equal(TopPFromBest(top_p, best=256, min_tokens_to_keep=keep)(no_ids, scores), expected)


def test_peaked_rows_are_read_from_their_best_scores_and_flat_rows_sorted():
    """The four peaked rows' nucleus lies within their 256 best scores; the flat rows' does not (nearly every token
    is in it), and a row of NaN scores is left to the full sort, which keeps the error transformers gives it."""
    scores = mixed_rows()
    processed, within = TopPFromBest(0.9, best=256).from_best(scores)
    assert within.tolist() == [True, True, True, True, False, False]
    kept = torch.isfinite(processed[:4]).sum(-1)
    assert ((kept > 1) & (kept < 256)).all()
    scores[0] = float("nan")
    assert not TopPFromBest(0.9, best=256).from_best(scores)[1][0]


def test_a_sampled_row_sorts_no_vocabulary(tokenizer, tiny_model, monkeypatch):
    """The reference's sampling (top-p 0.9) over peaked scores chooses its tokens without ``torch.sort``, which
    transformers' warper calls on every step."""
    loaded = as_loaded(tiny_model, tokenizer)
    decoders = [RowDecoder(DecodingArguments(), loaded, [1, 2, 3], seed=seed) for seed in range(3)]
    logits = torch.randn(3, len(tokenizer)) * 6.0
    logits[:, 100:140] += 10.0

    def no_sort(*args, **kwargs):
        raise AssertionError("the vocabulary was sorted")

    monkeypatch.setattr(torch, "sort", no_sort)
    choices = choose_tokens(decoders, logits)
    assert [choice.error for choice in choices] == [None] * 3
    assert all(100 <= choice.token < 140 for choice in choices)


def test_the_fewest_new_tokens_bar_the_end_token_then_cost_nothing():
    scores = torch.randn(1, 10)
    ours, theirs = MinNewTokens(3, 2, 7), MinNewTokensLengthLogitsProcessor(3, 2, 7)
    for length in (3, 4):  # shorter than 2 new tokens
        ids = torch.zeros(1, length, dtype=torch.long)
        assert torch.equal(ours(ids, scores), theirs(ids, scores))
        assert ours(ids, scores)[0, 7] == -float("inf")
    long_enough = torch.zeros(1, 5, dtype=torch.long)
    assert ours(long_enough, scores) is scores
    assert torch.equal(theirs(long_enough, scores), scores)
