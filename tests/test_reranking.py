"""rerank_samples: sampled replies scored by the trained multiple-choice head as the candidates of one turn."""

from __future__ import annotations

import pytest
import torch

from persona.data.chat_layout import template_turn
from persona.data.layout import build_inputs
from persona.errors import ConfigError
from persona.model.decoding import decode, generate_replies
from persona.model.generation import DecodingArguments, prompt_inputs
from persona.model.scoring import reply_scores
from tests.conftest import load_folder

PERSONA = ["i like cats.", "i am a nurse."]
HISTORY = ["hello, how are you?", "fine, and you?", "what do you do?"]


def test_replies_are_scored_as_the_reference_layout_scores_candidates(trained_model_dir):
    """In the reference layout, each reply's score is the head's score of ``build_inputs(persona, history, reply)``
    (the reference's own tensors) run through the model's classic path."""
    loaded = load_folder(trained_model_dir)
    layout = loaded.layout
    prompt = prompt_inputs(PERSONA, HISTORY, loaded, 8)["input_ids"]
    replies = layout.encode(["i work in a hospital.", "cats!", "i do not know what to say about that."])
    persona_ids, history_ids = layout.encode(PERSONA), layout.encode(HISTORY)
    rows = [build_inputs(persona_ids, history_ids, reply, loaded.ids, lm_labels=False) for reply in replies]
    width = max(len(row["input_ids"]) for row in rows)

    def padded(name):
        return torch.tensor([[row[name] + [loaded.ids.pad] * (width - len(row[name])) for row in rows]])

    with torch.no_grad():
        expected = loaded.model.forward_full(
            input_ids=padded("input_ids"),
            token_type_ids=padded("token_type_ids"),
            mc_token_ids=torch.tensor([[row["mc_token_ids"] for row in rows]]),
        ).mc_logits[0]
    assert reply_scores(loaded, prompt, replies) == pytest.approx(expected.tolist(), abs=1e-4)


def test_replies_become_the_chat_templates_own_candidate_blocks(template_trained):
    """In the chat-template layout, a generated reply's block is the block the template renders for its text."""
    loaded = load_folder(template_trained)
    texts = ["i work in a hospital.", "cats!"]
    rendered = template_turn(loaded.tokenizer, PERSONA, HISTORY, texts)
    prompt = prompt_inputs(PERSONA, HISTORY, loaded, 8)["input_ids"]
    replies = [block[1:-1] for block in rendered["candidates"]]  # what generation yields: no first token, no end
    assert loaded.layout.replies_as_turn(prompt, replies) == rendered
    assert len(reply_scores(loaded, prompt, replies)) == 2  # the likelihood prior's model scores them


def test_reranking_answers_with_the_sample_the_head_ranks_first(trained_model_dir):
    """Three replies sampled from one seed in one batch: generate_replies keeps the one with the highest score."""
    loaded = load_folder(trained_model_dir)
    decoding = DecodingArguments(do_sample=True, temperature=1.0, top_p=1.0, max_length=6, rerank_samples=3)
    prompt = prompt_inputs(PERSONA, HISTORY, loaded, decoding.max_length)
    torch.manual_seed(3)
    samples = decode(loaded, [prompt] * 3, decoding)
    scores = reply_scores(loaded, prompt["input_ids"], [tokens for tokens, _ in samples])
    best = samples[max(range(3), key=lambda index: (scores[index], -index))][0]
    torch.manual_seed(3)
    (reply,) = generate_replies(loaded, [(PERSONA, HISTORY)], decoding)
    assert reply.text == loaded.tokenizer.decode(best, skip_special_tokens=True).strip()
    assert len({tuple(tokens) for tokens, _ in samples}) > 1  # the samples differ: the choice was a real one


def test_rerank_samples_is_refused_where_it_cannot_apply(plain_chat_model):
    with pytest.raises(ConfigError, match="rerank_samples is 0"):
        DecodingArguments(rerank_samples=0)
    with pytest.raises(ConfigError, match="greedy decoding has one reply to rank"):
        DecodingArguments(do_sample=False, rerank_samples=4)
    assert not DecodingArguments(temperature=0.0, rerank_samples=4).do_sample  # greedy: one sample, nothing to rank
    prompted = load_folder(plain_chat_model)
    with pytest.raises(ConfigError, match="needs a trained multiple-choice head"):
        generate_replies(prompted, [(PERSONA, HISTORY)], DecodingArguments(rerank_samples=2))


def test_persona_serve_refuses_rerank_samples_before_loading_a_model():
    from persona.configs import DataArguments, ModelArguments
    from persona.serving.server import ServeArguments, build_server

    decoding = DecodingArguments(rerank_samples=2)
    with pytest.raises(ConfigError, match="persona-serve does not rerank"):
        build_server(ModelArguments(model_name_or_path="not/looked-for"), DataArguments(), ServeArguments(), decoding)
