"""The prefix cache: a prompt that starts as one read before reads only the rest, with the logits of reading it whole,
in the reference layout (token types in the key) and in a chat template; what it keeps and drops; persona-serve's
option."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from persona.errors import ConfigError
from persona.model.generation import DecodingArguments, prompt_inputs
from persona.model.prefix_cache import PrefixCache, prompt_key
from persona.model.running_batch import RunningBatch
from persona.serving.batching import ReplyBatcher, ReplyRequest
from persona.serving.server import ServeArguments
from tests.conftest import load_folder

PERSONA = ["i like cats.", "i am a nurse."]
FIRST = ["hello, what do you do?"]
NEXT = [*FIRST, "i am a nurse. and you?", "i teach. do you have pets?"]


@pytest.fixture(params=["reference layout", "chat template"])
def loaded(request, trained_model_dir, template_trained):
    return load_folder(trained_model_dir if request.param == "reference layout" else template_trained)


def _fed_tokens(model, fed: list[int]):
    """A hook that adds to ``fed``, at each forward pass of ``model``, how many tokens it was fed (remove it after)."""
    return model.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append(kwargs["input_ids"].numel()), with_kwargs=True
    )


def test_a_prompt_that_extends_one_read_before_reads_only_the_rest_with_the_same_logits(loaded):
    """The conversation's next turn repeats the first prompt: it is fed only the tokens after it, a prompt of another
    conversation with the same persona only those after the persona, and their logits, and those of the next step,
    equal a batch's without the cache."""
    first, second, other = (
        prompt_inputs(PERSONA, history, loaded, 10) for history in (FIRST, NEXT, ["where do you live?"])
    )
    assert second["input_ids"][: len(first["input_ids"])] == first["input_ids"]
    prefixes = PrefixCache(2**30)
    cached, plain = RunningBatch(loaded, prefixes), RunningBatch(loaded)
    cached.join([first])
    fed: list[int] = []
    hook = _fed_tokens(loaded.model, fed)
    try:
        got = cached.join([second, other])
    finally:
        hook.remove()
    # ``other`` shares the persona's tokens with ``first``: it too reads only what follows them
    shared = len(os.path.commonprefix([first["input_ids"], other["input_ids"]]))
    assert shared >= len(PERSONA)
    assert fed == [len(second["input_ids"]) - len(first["input_ids"]), len(other["input_ids"]) - shared]
    assert prefixes.reused == len(first["input_ids"]) + shared
    plain.join([first])
    torch.testing.assert_close(got, plain.join([second, other]), atol=1e-4, rtol=0)
    torch.testing.assert_close(cached.step([5, 6, 7]), plain.step([5, 6, 7]), atol=1e-4, rtol=0)


def test_a_prompt_read_again_whole_reads_its_last_token():
    """The same prompt twice: the keys and values of all its tokens but the last are found (the last is read for its
    logits); a prompt that shares two tokens finds those two."""
    prefixes = PrefixCache(2**20)
    keys = torch.arange(40.0).view(1, 2, 5, 4)
    prefixes.add((1, 2, 3, 4, 5), [(keys, -keys)])
    shared, found = prefixes.longest((1, 2, 3, 4, 5))
    assert shared == 4 and torch.equal(found[0][0], keys[:, :, :4]) and torch.equal(found[0][1], -keys[:, :, :4])
    shared, found = prefixes.longest((1, 2, 9))
    assert shared == 2 and torch.equal(found[0][0], keys[:, :, :2])
    assert prefixes.longest((7, 8)) == (0, None)
    assert (prefixes.read, prefixes.reused) == (10, 6)


def test_token_types_are_part_of_the_key():
    """The same ids after other speakers' types are another prompt: nothing of it is found."""
    prompt = {"input_ids": [1, 2, 3, 4], "token_type_ids": [7, 7, 8, 8]}
    swapped = {"input_ids": [1, 2, 3, 4], "token_type_ids": [8, 8, 7, 7]}
    prefixes = PrefixCache(2**20)
    prefixes.add(prompt_key(prompt, True), [(torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2))])
    assert prefixes.longest(prompt_key(swapped, True))[0] == 0
    assert prefixes.longest(prompt_key(prompt, True))[0] == 3


def test_it_keeps_the_most_recently_used_within_its_bytes_and_drops_what_a_longer_prompt_covers():
    def layers(length: int):
        return [(torch.zeros(1, 1, length, 8), torch.zeros(1, 1, length, 8))]  # 64 bytes a position

    prefixes = PrefixCache(64 * 9)
    prefixes.add((1, 2, 3), layers(3))
    prefixes.add((4, 5, 6), layers(3))
    prefixes.longest((1, 2, 3, 9))  # used: (4, 5, 6) is now the least recently used
    prefixes.add((7, 8, 9, 10), layers(4))
    assert list(prefixes.entries) == [(1, 2, 3), (7, 8, 9, 10)] and prefixes.bytes == 64 * 7
    prefixes.add((1, 2, 3, 4, 5), layers(5))  # covers (1, 2, 3)
    assert list(prefixes.entries) == [(7, 8, 9, 10), (1, 2, 3, 4, 5)] and prefixes.bytes == 64 * 9
    prefixes.add(tuple(range(11)), layers(11))  # larger than the whole cache: not kept
    assert prefixes.bytes == 64 * 9


def test_the_servers_next_turn_reads_only_what_follows_and_answers_as_without_the_cache(template_trained):
    """Through persona-serve's engine: the second turn of a conversation reuses the first's prompt, and both replies
    are those of an engine without the cache."""
    loaded = load_folder(template_trained)
    decoding = DecodingArguments(do_sample=False, max_length=6)

    def replies(prefix_cache_bytes: int) -> tuple[list[str], ReplyBatcher]:
        batcher = ReplyBatcher(
            loaded,
            max_history=4,
            max_batch_size=4,
            max_queue=8,
            batch_wait_ms=0,
            prefix_cache_bytes=prefix_cache_bytes,
        )
        texts = []
        try:
            for history in (FIRST, NEXT):
                events = []
                done = threading.Event()

                def deliver(event, events=events, done=done):
                    events.append(event)
                    if event.finish_reason:
                        done.set()

                batcher.submit(ReplyRequest(PERSONA, history, decoding, deliver))
                assert done.wait(60)
                texts.append("".join(event.delta for event in events))
        finally:
            batcher.close()
        return texts, batcher

    cached, batcher = replies(2**28)
    first = prompt_inputs(PERSONA, FIRST, loaded, 6)["input_ids"]
    assert batcher.prefixes.reused == len(first)
    plain, without = replies(0)
    assert cached == plain and without.prefixes is None


def test_serve_refuses_a_negative_prefix_cache():
    with pytest.raises(ConfigError, match="prefix_cache_mb"):
        ServeArguments(prefix_cache_mb=-1)
