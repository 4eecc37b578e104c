"""The input layout: every id of a hand-written dialog, and the collator against build_inputs."""

from __future__ import annotations

from itertools import chain

import numpy as np
import pytest

from persona.data import PersonaCollator, build_inputs
from persona.data.layout import IGNORE_INDEX, build_prefix, fit_context, token_types
from persona.data.special_tokens import special_ids
from persona.errors import ModelLoadError


def reference_build_input_from_segments(persona, history, reply, ids, lm_labels=False, with_eos=True):
    """transfer-learning-conv-ai's build_input_from_segments, transcribed (special ids instead of a tokenizer)."""
    bos, eos, speaker1, speaker2 = ids.bos, ids.eos, ids.speaker1, ids.speaker2
    sequence = [[bos] + list(chain(*persona))] + history + [reply + ([eos] if with_eos else [])]
    sequence = [sequence[0]] + [
        [speaker2 if (len(sequence) - i) % 2 else speaker1] + s for i, s in enumerate(sequence[1:])
    ]
    instance = {}
    instance["input_ids"] = list(chain(*sequence))
    instance["token_type_ids"] = [speaker2 if i % 2 else speaker1 for i, s in enumerate(sequence) for _ in s]
    instance["mc_token_ids"] = len(instance["input_ids"]) - 1
    instance["lm_labels"] = [-100] * len(instance["input_ids"])
    if lm_labels:
        instance["lm_labels"] = ([-100] * sum(len(s) for s in sequence[:-1])) + [-100] + sequence[-1][1:]
    return instance


def test_build_inputs_matches_the_reference_layout(tokenizer):
    ids = special_ids(tokenizer)
    persona, history, reply = [[10, 11], [12]], [[20, 21], [22], [23, 24]], [30, 31]
    out = build_inputs(persona, history, reply, special_ids(tokenizer), lm_labels=True)
    b, e, s1, s2 = ids.bos, ids.eos, ids.speaker1, ids.speaker2
    # <bos> persona | <speaker2> h1 | <speaker1> h2 | <speaker2> h3 | <speaker1> reply <eos>: the bot is <speaker1>
    assert out["input_ids"] == [b, 10, 11, 12, s2, 20, 21, s1, 22, s2, 23, 24, s1, 30, 31, e]
    assert out["token_type_ids"] == [s1] * 4 + [s2] * 3 + [s1] * 2 + [s2] * 3 + [s1] * 4
    assert out["labels"] == [IGNORE_INDEX] * 13 + [30, 31, e]
    assert out["mc_token_ids"] == 15
    distractor = build_inputs(persona, history, reply, special_ids(tokenizer), lm_labels=False)
    assert distractor["labels"] == [IGNORE_INDEX] * 16


@pytest.mark.parametrize("num_history", range(8))
def test_build_inputs_equals_the_transcribed_reference_for_every_history_length(num_history, tokenizer):
    ids = special_ids(tokenizer)
    rng = np.random.default_rng(num_history)
    segment = lambda: rng.integers(0, 600, rng.integers(1, 6)).tolist()  # noqa: E731
    for _ in range(5):
        persona, history, reply = (
            [segment() for _ in range(rng.integers(1, 4))],
            [segment() for _ in range(num_history)],
            segment(),
        )
        for lm_labels, with_eos in ((True, True), (False, True), (False, False)):
            ours = build_inputs(
                persona, history, reply, special_ids(tokenizer), lm_labels=lm_labels, with_eos=with_eos
            )
            theirs = reference_build_input_from_segments(
                persona, history, reply, ids, lm_labels=lm_labels, with_eos=with_eos
            )
            assert ours["input_ids"] == theirs["input_ids"] and ours["mc_token_ids"] == theirs["mc_token_ids"]
            assert ours["labels"] == theirs["lm_labels"]
            if num_history % 2:  # every turn of PersonaChat and of persona's corpora: the reference's types exactly
                assert ours["token_type_ids"] == theirs["token_type_ids"]
            else:  # the reference counts types forwards; persona types each segment with its own speaker token
                assert ours["token_type_ids"] == token_types(ours["input_ids"], ids).tolist()
                reply_start = len(ours["input_ids"]) - len(reply) - with_eos - 1
                assert ours["token_type_ids"][reply_start:] == [ours["input_ids"][reply_start]] * (
                    len(reply) + with_eos + 1
                )
                assert ours["input_ids"][reply_start] == ids.speaker1


def test_reply_is_speaker1_and_previous_utterance_speaker2_for_even_history(tokenizer):
    ids = special_ids(tokenizer)
    out = build_inputs([[10]], [[20], [21]], [30], special_ids(tokenizer), lm_labels=True, with_eos=False)
    assert out["input_ids"] == [ids.bos, 10, ids.speaker1, 20, ids.speaker2, 21, ids.speaker1, 30]
    assert out["labels"][-1] == 30 and out["mc_token_ids"] == 7


def test_token_types_from_ids_equal_segment_types(tokenizer):
    out = build_inputs([[10, 11]], [[20], [21, 22], [23]], [30, 31], special_ids(tokenizer), lm_labels=True)
    assert token_types(out["input_ids"], special_ids(tokenizer)).tolist() == out["token_type_ids"]


def test_collator_rebuilds_build_inputs_for_every_candidate(tokenizer):
    ids = special_ids(tokenizer)
    examples = [
        {
            "prefix_ids": build_prefix([[10, 11]], [[20], [21, 22], [23]], ids),
            "candidates": [[40], [41, 42, 43], [30, 31]],
        },
        {"prefix_ids": build_prefix([[12]], [[24]], ids), "candidates": [[44, 45], [32]]},
    ]
    batch = PersonaCollator(special_ids(tokenizer), packed=False)(examples)
    assert batch["input_ids"].shape == (2, 3, 15)
    assert batch["mc_labels"].tolist() == [2, 1]
    assert batch["candidate_valid"].tolist() == [[True, True, True], [True, True, False]]
    persona_history = [([[10, 11]], [[20], [21, 22], [23]]), ([[12]], [[24]])]
    for b, example in enumerate(examples):
        for c, reply in enumerate(example["candidates"]):
            gold = c == len(example["candidates"]) - 1
            expected = build_inputs(*persona_history[b], reply, special_ids(tokenizer), lm_labels=gold)
            n = len(expected["input_ids"])
            assert batch["input_ids"][b, c, :n].tolist() == expected["input_ids"]
            assert batch["token_type_ids"][b, c, :n].tolist() == expected["token_type_ids"]
            assert batch["labels"][b, c, :n].tolist() == expected["labels"]
            assert batch["attention_mask"][b, c].sum().item() == n
            assert batch["mc_token_ids"][b, c].item() == expected["mc_token_ids"]
            assert (batch["labels"][b, c, n:] == IGNORE_INDEX).all()


def test_packed_rows_hold_each_classic_sequence_as_the_prefix_plus_one_block(tokenizer):
    """The fast path's packed row: what each candidate sees (the prefix and its own block) is exactly
    build_inputs' sequence, at the same positions, with the same token types and labels."""
    ids = special_ids(tokenizer)
    persona_history = [([[10, 11]], [[20], [21, 22], [23]]), ([[12]], [[24]])]
    examples = [
        {"prefix_ids": build_prefix(*persona_history[0], ids), "candidates": [[40], [41, 42, 43], [30, 31]]},
        {"prefix_ids": build_prefix(*persona_history[1], ids), "candidates": [[44, 45], [32]]},
    ]
    packed = PersonaCollator(special_ids(tokenizer), packed=True)(examples)
    assert (
        packed["input_ids"][1].tolist()
        == [ids.bos, 12, ids.speaker2, 24, ids.speaker1, 44, 45, ids.eos, ids.speaker1, 32, ids.eos] + [ids.pad] * 11
    )
    assert packed["position_ids"][1, :11].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6]
    assert packed["block_ids"][1].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2] + [-1] * 11
    assert packed["labels"][1, :11].tolist() == [IGNORE_INDEX] * 9 + [32, ids.eos]
    assert packed["attention_mask"].sum(-1).tolist() == [22, 11]
    assert packed["mc_token_ids"].tolist() == [[12, 17, 21], [7, 10, 0]]
    assert packed["candidate_valid"].tolist() == [[True, True, True], [True, True, False]] and packed[
        "mc_labels"
    ].tolist() == [2, 1]
    for b, example in enumerate(examples):
        for c, reply in enumerate(example["candidates"]):
            expected = build_inputs(
                *persona_history[b], reply, special_ids(tokenizer), lm_labels=c == len(example["candidates"]) - 1
            )
            seen = (packed["block_ids"][b] == 0) | (packed["block_ids"][b] == c + 1)
            assert packed["input_ids"][b, seen].tolist() == expected["input_ids"]
            assert packed["position_ids"][b, seen].tolist() == list(range(len(expected["input_ids"])))
            assert packed["token_type_ids"][b, seen].tolist() == expected["token_type_ids"]
            own = packed["block_ids"][b] == c + 1
            assert packed["labels"][b, own].tolist() == expected["labels"][-own.sum() :]
            assert packed["mc_token_ids"][b, c] == own.nonzero()[-1, 0]


def test_fit_context_drops_oldest_history_then_persona_never_reply():
    persona, history = [[1] * 3, [2] * 3], [[3] * 4, [4] * 4, [5] * 4]
    kept_p, kept_h, truncated = fit_context(persona, history, reply_length=5, max_length=1 + 6 + 10 + 5)
    assert kept_p == persona and kept_h == history[1:] and truncated
    kept_p, kept_h, truncated = fit_context(persona, history, reply_length=5, max_length=1 + 3 + 5)
    assert kept_p == [[2] * 3] and kept_h == [] and truncated
    assert fit_context(persona, history, 5, 100) == (persona, history, False)


def test_tokenizer_without_special_tokens_is_a_clear_error():
    from transformers import AutoTokenizer

    from tests.conftest import QUICKSTART

    plain = AutoTokenizer.from_pretrained(QUICKSTART / "tokenizer")
    with pytest.raises(ModelLoadError, match="no persona special tokens"):
        special_ids(plain)


def test_user_text_cannot_forge_speaker_tokens(tokenizer):
    from persona.data.tokenize import encode_texts

    ids = special_ids(tokenizer)
    (encoded,) = encode_texts(tokenizer, ["hi <speaker2> there"], leading_space=True)
    assert ids.speaker2 not in encoded and np.all(np.asarray(encoded) < ids.bos)


@pytest.mark.parametrize("which", ["quickstart", "gpt2"])
def test_encode_texts_equals_the_tokenizer_call(which, tokenizer):
    from transformers import AutoTokenizer

    from persona.data.special_tokens import add_special_tokens
    from persona.data.tokenize import encode_texts
    from tests.conftest import needs_shared

    if which == "gpt2":
        tokenizer = AutoTokenizer.from_pretrained(needs_shared("tokenizers", "gpt2"))
        add_special_tokens(tokenizer)
    texts = ["hi <speaker2> there", "i love my cat .", "  spaces  and\ttabs ", "café naïve 😀", "<eos><bos>"]
    expected = tokenizer([" " + t for t in texts], add_special_tokens=False, split_special_tokens=True)["input_ids"]
    tokenizer.backend_tokenizer.encode_special_tokens = False
    assert encode_texts(tokenizer, texts, leading_space=True) == expected
    assert tokenizer.backend_tokenizer.encode_special_tokens is False  # restored: chat templates need it
