"""Continuous batching: requests join the running batch between decoding steps, each row is answered at its own end,
and a row decodes as it would alone (greedy and seeded), in the reference layout and in a chat template."""

from __future__ import annotations

import threading

import pytest
import torch

from persona.model.generation import DecodingArguments, prompt_inputs
from persona.model.running_batch import RunningBatch
from persona.serving.batching import ReplyBatcher, ReplyRequest
from persona.serving.streaming import ReplyStream
from tests.conftest import load_folder, transformers_generate

PERSONA = ["i like cats.", "i am a nurse."]
HISTORIES = {
    "long": ["hello, what do you do?"],
    "short": ["do you have pets?"],
    "longer prompt": ["where do you live? i live in a big city with many people and many cars"],
}


@pytest.fixture(params=["reference layout", "chat template"])
def loaded(request, trained_model_dir, template_trained):
    return load_folder(trained_model_dir if request.param == "reference layout" else template_trained)


def alone(loaded, history: list[str], decoding: DecodingArguments) -> str:
    """The text a stream sends for the reply ``generate`` gives to ``history`` alone (one row, no batch)."""
    ((tokens, ended),) = transformers_generate(
        loaded, [prompt_inputs(PERSONA, history, loaded, decoding.max_length)], decoding
    )
    sent: list[str] = []
    stream = ReplyStream(lambda ids: loaded.tokenizer.decode(ids, skip_special_tokens=True), [], sent.append)
    for token in tokens:
        stream.add(token, loaded.ids.eos)
    if ended:
        stream.add(loaded.ids.eos, loaded.ids.eos)
    else:
        stream.close("length")
    return "".join(sent)


def _run(batcher: ReplyBatcher, requests: dict[str, ReplyRequest]) -> None:
    """Submit the ``long`` request; the others are submitted by its first event (from the worker, before its next
    step), so that they join the running batch."""
    done = {name: threading.Event() for name in requests}
    joined = threading.Event()
    for name, request in requests.items():
        deliver = request.deliver

        def watched(event, name=name, deliver=deliver):
            deliver(event)
            if name == "long" and not joined.is_set():
                joined.set()
                for other, waiting in requests.items():
                    if other != "long":
                        batcher.submit(waiting)
            if event.finish_reason:
                done[name].set()

        request.deliver = watched
    batcher.submit(requests["long"])
    try:
        assert all(event.wait(60) for event in done.values())
    finally:
        batcher.close()


def test_requests_join_a_running_batch_and_each_is_answered_alone_and_at_its_own_end(loaded, join_sizes):
    """A 30-token reply is decoding when two short ones arrive: they join it at the next step (one join of two),
    end before it and are answered then; every reply equals the one generate gives for its prompt alone."""
    decodings = {
        "long": DecodingArguments(do_sample=False, max_length=30, min_length=30),
        "short": DecodingArguments(do_sample=False, max_length=5),
        "longer prompt": DecodingArguments(do_sample=False, max_length=8, min_length=8),
    }
    log: list[tuple[str, object]] = []
    requests = {
        name: ReplyRequest(
            PERSONA, HISTORIES[name], decodings[name], lambda event, name=name: log.append((name, event))
        )
        for name in HISTORIES
    }
    batcher = ReplyBatcher(loaded, max_history=2, max_batch_size=4, max_queue=8, batch_wait_ms=0)
    _run(batcher, requests)
    assert join_sizes == [1, 2]
    ends = [name for name, event in log if event.finish_reason]
    assert ends[-1] == "long" and sorted(ends[:2]) == ["longer prompt", "short"]
    for name in HISTORIES:
        text = "".join(event.delta for who, event in log if who == name)
        assert text == alone(loaded, HISTORIES[name], decodings[name]), name
        assert [e.finish_reason for who, e in log if who == name and e.finish_reason] == ["length"]


def test_a_seeded_request_draws_as_generate_does_whoever_shares_its_batch(loaded):
    """Sampling with a seed: the reply of a row that joined a running batch of other seeded rows equals
    ``torch.manual_seed(seed)`` then generate for that prompt alone."""
    sampling = DecodingArguments(do_sample=True, temperature=1.0, top_p=0.9, max_length=12)
    texts = {name: [] for name in HISTORIES}
    requests = {
        name: ReplyRequest(
            PERSONA,
            HISTORIES[name],
            sampling if name != "long" else DecodingArguments(do_sample=True, max_length=30, min_length=30),
            lambda event, name=name: texts[name].append(event.delta),
            seed=seed,
        )
        for seed, name in enumerate(HISTORIES, start=11)
    }
    _run(ReplyBatcher(loaded, max_history=2, max_batch_size=4, max_queue=8, batch_wait_ms=0), requests)
    for seed, name in enumerate(HISTORIES, start=11):
        if name == "long":
            continue
        torch.manual_seed(seed)
        assert "".join(texts[name]) == alone(loaded, HISTORIES[name], sampling), name


def test_rows_that_leave_take_their_cache_columns_with_them(trained_model_dir):
    """Two rows of 10 and 17 prompt tokens, one step: keeping the short one leaves a cache 11 positions wide, whose
    next logits equal those of the short row decoded alone."""
    loaded = load_folder(trained_model_dir)
    prompts = [prompt_inputs(PERSONA[:1], [text], loaded, 4) for text in ("hi!", "where do you live? i live in paris")]
    assert [len(p["input_ids"]) for p in prompts] == [10, 17]
    together, alone = RunningBatch(loaded), RunningBatch(loaded)
    together.join(prompts)
    alone.join(prompts[:1])
    together.step([5, 5])
    alone.step([5])
    together.keep([0])
    assert len(together) == 1 and together.mask.shape == (1, 11) and together.cache.get_seq_length() == 11
    torch.testing.assert_close(together.step([7]), alone.step([7]), atol=1e-5, rtol=0)


def test_a_sliding_window_model_decodes_in_the_running_batch_as_it_does_alone():
    """A Mistral with a 4-token window (prompts of 11 and 6 tokens, joined one after the other, then two steps): the
    running batch's full cache gives the logits of one forward pass over each row alone."""
    from transformers import MistralConfig, MistralForCausalLM

    from persona.data.input_layouts import ChatTemplateLayout
    from persona.data.special_tokens import SpecialIds
    from persona.model.loading import LoadedModel

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=4,
        max_position_embeddings=64,
    )
    model = MistralForCausalLM(config).eval()
    ids = SpecialIds(bos=None, eos=99, pad=0, speaker1=None, speaker2=None)
    layout = ChatTemplateLayout(tokenizer=None, ids=ids, leading_space=False)
    batch = RunningBatch(LoadedModel(model, None, layout, 64, token_types=False))
    prompts = [list(range(1, 12)), list(range(20, 26))]
    first = [batch.join([{"input_ids": prompt}])[0] for prompt in prompts]
    steps = [batch.step([30, 31]), batch.step([32, 33])]
    for row, (prompt, fed) in enumerate(zip(prompts, ([30, 32], [31, 33]))):
        with torch.no_grad():
            alone = model(torch.tensor([prompt + fed])).logits[0, len(prompt) - 1 :]
        got = torch.stack([first[row], steps[0][row], steps[1][row]])
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)


def test_a_model_without_a_cache_decodes_in_a_running_batch_by_reading_whole_rows(tokenizer):
    """openai-gpt keeps no key/value cache: its running batch (two prompts joined one after the other, a step, the
    first row dropped, a step) reads whole rows, and the logits are one forward pass over the row alone."""
    from persona.model.running_batch import RecomputingBatch, running_batch
    from tests.conftest import TINY_OPENAI_GPT, as_loaded, build_tiny

    loaded = as_loaded(build_tiny(TINY_OPENAI_GPT), tokenizer)
    batch = running_batch(loaded)
    assert isinstance(batch, RecomputingBatch)
    prompts = [prompt_inputs(PERSONA, [text], loaded, 4) for text in ("hi!", "where do you live? in paris")]
    first = [batch.join([prompt])[0] for prompt in prompts]
    steps = [batch.step([5, 6])]
    batch.keep([1])
    steps.append(batch.step([7])[0])

    def alone(prompt: dict, fed: list[int]) -> torch.Tensor:
        ids = torch.tensor([prompt["input_ids"] + fed])
        types = torch.tensor([prompt["token_type_ids"] + prompt["token_type_ids"][-1:] * len(fed)])
        with torch.no_grad():
            return loaded.model(input_ids=ids, token_type_ids=types).logits[0, -1]

    torch.testing.assert_close(first[0], alone(prompts[0], []), atol=1e-5, rtol=0)
    torch.testing.assert_close(first[1], alone(prompts[1], []), atol=1e-5, rtol=0)
    torch.testing.assert_close(steps[0][0], alone(prompts[0], [5]), atol=1e-5, rtol=0)
    torch.testing.assert_close(steps[1], alone(prompts[1], [6, 7]), atol=1e-5, rtol=0)


def test_a_join_reads_each_distinct_prompt_once_and_only_its_last_position_through_the_lm_head(loaded):
    """Three samples of one prompt beside another: the model reads two rows, once, asked for the last position's
    logits alone (which equal the last of all the logits), and each of the four rows gets its prompt's logits."""
    prompts = [prompt_inputs(PERSONA, HISTORIES[name], loaded, 4) for name in ("short", "short", "long", "short")]
    seen: list[dict] = []
    hook = loaded.model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)
    try:
        logits = RunningBatch(loaded).join(prompts)
    finally:
        hook.remove()
    assert len(seen) == 1 and seen[0]["input_ids"].shape[0] == 2 and seen[0]["logits_to_keep"] == 1
    assert len(logits) == 4 and torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[3])
    ids = torch.tensor([prompts[2]["input_ids"]])
    types = {"token_type_ids": torch.tensor([prompts[2]["token_type_ids"]])} if loaded.token_types else {}
    with torch.no_grad():
        last = loaded.model(input_ids=ids, logits_to_keep=1, **types).logits
        whole = loaded.model(input_ids=ids, **types).logits
    assert last.shape[1] == 1
    torch.testing.assert_close(last[0, -1], whole[0, -1], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[2], whole[0, -1].float(), atol=1e-5, rtol=0)


def test_the_batcher_and_the_chat_loop_read_the_model_in_inference_mode(trained_model_dir):
    """Every forward pass of persona-serve's worker (a prompt read, its steps) and of persona-chat's and
    persona-eval's loop runs in inference mode, not under ``no_grad`` alone."""
    from persona.model.decoding import decode

    loaded = load_folder(trained_model_dir)
    modes: list[bool] = []
    hook = loaded.model.register_forward_pre_hook(lambda module, args: modes.append(torch.is_inference_mode_enabled()))
    greedy = DecodingArguments(do_sample=False, max_length=4, min_length=4)
    try:
        decode(loaded, [prompt_inputs(PERSONA, HISTORIES["short"], loaded, 4)], greedy)
        assert len(modes) == 4 and all(modes)
        modes.clear()
        batcher = ReplyBatcher(loaded, max_history=2, max_batch_size=2, max_queue=2, batch_wait_ms=0)
        _run(batcher, {"long": ReplyRequest(PERSONA, HISTORIES["short"], greedy, lambda event: None)})
        assert len(modes) == 4 and all(modes)
    finally:
        hook.remove()
