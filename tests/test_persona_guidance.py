"""persona_weight: decoding guided by the persona, each token's score checked against full forward passes."""

from __future__ import annotations

import pytest
import torch

from persona.configs import DataArguments
from persona.errors import ConfigError
from persona.model.generation import DecodingArguments, generate_batch, generate_replies, prompt_inputs
from persona.serving.server import ServeArguments, build_engine
from tests.conftest import as_loaded, load_folder

CHATS = [
    (["i like cats.", "i am a nurse."], ["hello! what do you do?"]),
    (["i live in paris.", "i play chess every day."], ["hi.", "hey, how are you?", "good. where do you live?"]),
]


def _last_logits(loaded, prompt: dict, reply: list[int]) -> torch.Tensor:
    inputs = {"input_ids": torch.tensor([prompt["input_ids"] + reply])}
    if loaded.token_types:
        types = prompt["token_type_ids"]
        inputs["token_type_ids"] = torch.tensor([types + types[-1:] * len(reply)])
    with torch.no_grad():
        return loaded.model(**inputs).logits[0, -1].float()


def _guided_greedy(loaded, prompt: dict, alone: dict, weight: float, steps: int) -> list[int]:
    """Greedy decoding by the guidance formula, one full forward pass per step and prompt, no cache, no batch."""
    eos = loaded.ids.eos
    suppressed = DecodingArguments().generation_config(loaded).suppress_tokens
    reply: list[int] = []
    for step in range(steps):
        scores = _last_logits(loaded, prompt, reply)
        scores[suppressed] = -torch.inf
        if step == 0:
            scores[eos] = -torch.inf  # min_length 1
        guided = scores.log_softmax(-1)
        if weight:  # (the suppressed tokens' -inf times 0 would be NaN)
            guided = guided + weight * (guided - _last_logits(loaded, alone, reply).log_softmax(-1))
        token = int(guided.argmax())
        if token == eos:
            break
        reply.append(token)
    return reply


@pytest.fixture(params=["reference layout with token types", "chat template"])
def loaded(request, tiny_model, tokenizer, plain_chat_model):
    if request.param.startswith("reference"):
        return as_loaded(tiny_model, tokenizer, token_types=True)
    return load_folder(plain_chat_model)


def test_each_guided_token_is_the_formulas_in_a_left_padded_batch(loaded):
    """Two prompts of different lengths decoded together with persona_weight 1.5: every token is the argmax of
    log p(t | persona, history) + 1.5 (log p(t | persona, history) - log p(t | history)), each log-probability from a
    full forward pass of that row alone (its positions and token types as the batch cannot mix them)."""
    decoding = DecodingArguments(do_sample=False, max_length=6, persona_weight=1.5)
    prompts = [prompt_inputs(persona, history, loaded, 6) for persona, history in CHATS]
    alone = [prompt_inputs([], history, loaded, 6) for _, history in CHATS]
    generated = generate_batch(loaded, prompts, decoding, alone)
    expected = [_guided_greedy(loaded, p, a, 1.5, 6) for p, a in zip(prompts, alone)]
    assert [tokens for tokens, _ in generated] == expected
    plain = generate_batch(loaded, prompts, DecodingArguments(do_sample=False, max_length=6))
    assert [_guided_greedy(loaded, p, a, 0.0, 6) for p, a in zip(prompts, alone)] == [t for t, _ in plain]


def test_the_weights_extremes(tiny_model, tokenizer):
    """The largest weight samples finite replies (sampled and greedy); past the range, NaN, beam search and
    persona-serve are refused with the field named."""
    loaded = as_loaded(tiny_model, tokenizer)
    for decoding in (
        DecodingArguments(persona_weight=10.0, max_length=8),
        DecodingArguments(persona_weight=10.0, max_length=8, do_sample=False, rerank_samples=1),
    ):
        torch.manual_seed(0)
        assert len(generate_replies(loaded, CHATS, decoding)) == 2
    for value in (10.5, -0.1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="persona_weight"):
            DecodingArguments(persona_weight=value)
    with pytest.raises(ConfigError, match="num_beams"):
        DecodingArguments(persona_weight=1.0, do_sample=False, num_beams=2)
    with pytest.raises(ConfigError, match="persona-serve does not weigh the persona"):
        build_engine(None, DataArguments(), ServeArguments(), DecodingArguments(persona_weight=1.0))
