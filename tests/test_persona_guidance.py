"""persona_weight: decoding guided by the persona, each token's score checked against full forward passes."""

from __future__ import annotations

import pytest
import torch

from persona.configs import DataArguments
from persona.errors import ConfigError
from persona.model.decoding import decode, generate_replies
from persona.model.generation import DecodingArguments, prompt_inputs
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
    generated = decode(loaded, prompts, decoding, unconditional=alone)
    expected = [_guided_greedy(loaded, p, a, 1.5, 6) for p, a in zip(prompts, alone)]
    assert [tokens for tokens, _ in generated] == expected
    plain = [tokens for tokens, _ in decode(loaded, prompts, DecodingArguments(do_sample=False, max_length=6))]
    assert [_guided_greedy(loaded, p, a, 0.0, 6) for p, a in zip(prompts, alone)] == plain
    assert expected != plain, "the guidance changed no token: this test could not tell it from plain decoding"


def test_the_weights_extremes(tiny_model, tokenizer):
    """The largest weight samples finite replies (sampled and greedy); past the range, NaN and an engine behind
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
    in_front = ServeArguments(engine_url="http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="cannot decode persona_weight"):
        build_engine(None, DataArguments(), in_front, DecodingArguments(persona_weight=1.0))


def test_persona_serve_guides_a_request_as_persona_chat_does_and_an_engine_behind_it_refuses(
    trained_model_dir, join_sizes
):
    """``persona_weight: 2`` in a request to persona's own engine: the greedy reply persona-chat's bot gives with
    that weight (which differs from the unguided one here), joined with an unguided request (two rows, one pair
    without the persona); the same request to a persona-serve in front of it is a 400 naming the field."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from persona.configs import ModelArguments
    from persona.model.decoding import Bot
    from persona.serving.server import free_port, running_server

    persona, history = CHATS[0]
    messages = [{"role": "system", "content": " ".join(persona)}, {"role": "user", "content": history[0]}]
    body = {"messages": messages, "temperature": 0, "max_tokens": 8}
    loaded = load_folder(trained_model_dir)
    guided, plain = (
        Bot(loaded, DecodingArguments(do_sample=False, max_length=8, persona_weight=weight), 2).reply(persona, history)
        for weight in (2.0, 0.0)
    )
    assert guided != plain
    join_sizes.clear()
    model = ModelArguments(model_name_or_path=str(trained_model_dir))
    serve = ServeArguments(port=free_port(), batch_wait_ms=500)
    with running_server(model, DataArguments(), serve, DecodingArguments()) as (url, _):
        with ThreadPoolExecutor(2) as pool:
            answers = list(
                pool.map(
                    lambda extra: httpx.post(f"{url}/v1/chat/completions", json={**body, **extra}, timeout=60),
                    ({"persona_weight": 2.0}, {}),
                )
            )
        assert [a.json()["choices"][0]["message"]["content"] for a in answers] == [guided, plain]
        assert join_sizes == [2, 1]
        in_front = ServeArguments(port=free_port(), engine_url=url)
        with running_server(None, DataArguments(), in_front, DecodingArguments()) as (front, _):
            refused = httpx.post(f"{front}/v1/chat/completions", json={**body, "persona_weight": 2.0}, timeout=60)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "persona_weight" and "own engine" in refused.json()["error"]["message"]


def test_a_guided_batch_keeps_each_rows_pair_when_rows_leave(trained_model_dir):
    """Three rows, the first and the last with a pair: after the first row leaves, the last row's pair logits are
    still its own (its prompt without the persona, fed the same tokens); a batch without pairs computes none."""
    from persona.model.persona_guidance import GuidedBatch
    from persona.model.running_batch import RunningBatch

    loaded = load_folder(trained_model_dir)
    histories = [["hi."], ["where do you live?"], ["do you like cats? i have two of them."]]
    prompts = [prompt_inputs(CHATS[0][0], history, loaded, 4) for history in histories]
    alone = [prompt_inputs([], history, loaded, 4) for history in histories]
    batch = GuidedBatch(loaded)
    _, pairs = batch.join(prompts, [alone[0], None, alone[2]])
    assert pairs.shape[0] == 3 and not pairs[1].any()
    batch.step([5, 6, 7])
    batch.keep([1, 2])
    _, pairs = batch.step([8, 9])
    reference = RunningBatch(loaded)
    reference.join([alone[2]])
    reference.step([7])
    torch.testing.assert_close(pairs[1], reference.step([9])[0], atol=1e-5, rtol=0)
    assert not pairs[0].any()
    plain = GuidedBatch(loaded)
    assert plain.join(prompts[:2], [None, None])[1] is None and plain.step([5, 6])[1] is None
