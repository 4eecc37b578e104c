"""rerank_samples: sampled replies scored by the trained multiple-choice head as the candidates of one turn."""

from __future__ import annotations

import json

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


def test_persona_serve_reranks_a_request_as_the_head_ranks_its_samples(trained_model_dir, monkeypatch):
    """``rerank_samples: 3`` with a seed answers the reply, of the three that ``n: 3`` returns for that seed, that the
    head ranks first (for some seed not the first of them, so the choice is a real one), streamed as the whole reply;
    a persona-serve in front of an engine refuses it with a 400 naming the field."""
    import httpx

    from persona.configs import DataArguments, ModelArguments
    from persona.serving.batching import ReplyBatcher
    from persona.serving.server import ServeArguments, free_port, running_server

    ranked = []  # what the engine ranked: each reply's prompt and samples (token ids)
    rank = ReplyBatcher.rank
    monkeypatch.setattr(ReplyBatcher, "rank", lambda self, p, r: ranked.append((p, r)) or rank(self, p, r))
    loaded = load_folder(trained_model_dir)
    messages = [{"role": "system", "content": " ".join(PERSONA)}, {"role": "user", "content": HISTORY[-1]}]
    body = {"messages": messages, "temperature": 1.0, "top_p": 1.0, "max_tokens": 6}
    model = ModelArguments(model_name_or_path=str(trained_model_dir))
    chosen = []
    serve = ServeArguments(port=free_port())
    with running_server(model, DataArguments(), serve, DecodingArguments()) as (url, _):

        def ask(**extra):
            return httpx.post(f"{url}/v1/chat/completions", json={**body, **extra}, timeout=60).json()

        for seed in range(4):
            samples = [choice["message"]["content"] for choice in ask(seed=seed, n=3)["choices"]]
            answer = ask(seed=seed, rerank_samples=3)["choices"][0]["message"]["content"]
            prompt, replies = ranked[-1]
            assert prompt == prompt_inputs(PERSONA, HISTORY[-1:], loaded, 6)["input_ids"]
            texts = [loaded.tokenizer.decode(r, skip_special_tokens=True).strip().rstrip("\ufffd") for r in replies]
            assert [text.rstrip() for text in texts] == samples  # as a stream ends a reply: no half character
            scores = reply_scores(loaded, prompt, replies)
            chosen.append(max(range(3), key=lambda index: (scores[index], -index)))
            assert answer == samples[chosen[-1]], (seed, samples, scores)
        whole = ask(seed=0, rerank_samples=3)["choices"][0]["message"]["content"]
        alone = ranked[-1][1]
        two = [choice["message"]["content"] for choice in ask(seed=0, n=2, rerank_samples=3)["choices"]]
        groups = [replies for _, replies in ranked[-2:]]
        assert two[0] == whole and alone in groups
        assert not {tuple(r) for r in groups[0]} & {tuple(r) for r in groups[1]}  # the choices share no sample
        streamed = httpx.post(
            f"{url}/v1/chat/completions", json={**body, "seed": 0, "rerank_samples": 3, "stream": True}, timeout=60
        )
        chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
        deltas = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
        assert [delta for delta in deltas if delta] == [whole]  # held back until ranked, then whole
        in_front = ServeArguments(port=free_port(), engine_url=url)
        with running_server(None, DataArguments(), in_front, DecodingArguments()) as (front, _):
            refused = httpx.post(f"{front}/v1/chat/completions", json={**body, "rerank_samples": 3}, timeout=60)
    assert any(index != 0 for index in chosen), chosen
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "rerank_samples"
    assert "own engine" in refused.json()["error"]["message"]


def test_persona_serve_refuses_rerank_samples_it_cannot_decode_before_it_starts(plain_chat_model):
    from persona.configs import DataArguments, ModelArguments
    from persona.serving.openai_api import chat_request
    from persona.serving.protocol import APIError, ChatCompletionRequest
    from persona.serving.server import ServeArguments, build_engine, build_server

    decoding = DecodingArguments(rerank_samples=2)
    in_front = ServeArguments(engine_url="http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="cannot decode rerank_samples"):
        build_engine(None, DataArguments(), in_front, decoding)
    with pytest.raises(ConfigError, match="needs a trained multiple-choice head"):
        prompted = ModelArguments(model_name_or_path=str(plain_chat_model))
        build_server(prompted, DataArguments(), ServeArguments(), decoding)
    body = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], rerank_samples=2)
    with pytest.raises(APIError, match="greedy decoding has one reply to rank") as refused:
        chat_request(body, DecodingArguments(do_sample=False), max_tokens_cap=32)  # a greedy server's defaults
    assert refused.value.status == 400 and refused.value.detail.param == "rerank_samples"


def test_a_sample_group_answers_once_with_the_ranked_sample_or_the_first_error():
    from persona.serving.batching import ReplyRequest
    from persona.serving.engine import ReplyEvent
    from persona.serving.reranking import SampleGroup

    def group(rank):
        answered = []
        request = ReplyRequest(PERSONA, HISTORY, DecodingArguments(rerank_samples=2), answered.append, seed=5)
        return SampleGroup(request, 2, rank), request, answered

    samples_group, request, answered = group(lambda prompt, replies: replies.index([7, 8]))
    first, second = samples_group.samples()
    assert (first.seed, first.request_id, first.gone) == (5, request.request_id, request.gone) and second.seed != 5
    first.deliver(ReplyEvent(delta="a"))
    second.deliver(ReplyEvent(delta="b", logprobs=[{"token": "b"}]))
    second.deliver(ReplyEvent(delta="c"))
    second.on_reply([1, 2], [7, 8])
    second.deliver(ReplyEvent(finish_reason="length", completion_tokens=2))
    assert answered == []  # nothing before every sample has ended
    first.on_reply([1, 2], [9])
    first.deliver(ReplyEvent(finish_reason="stop", completion_tokens=1))
    assert answered == [
        ReplyEvent(delta="bc", logprobs=[{"token": "b"}]),
        ReplyEvent(finish_reason="length", completion_tokens=2),
    ]
    failing, request, answered = group(lambda prompt, replies: 0)
    first, second = failing.samples()
    error = ReplyEvent(finish_reason="error", error="boom", status=500)
    first.deliver(error)
    second.deliver(ReplyEvent(finish_reason="stop"))
    assert answered == [error] and request.gone.is_set()  # the other samples stop
