"""The decoding loop of chat and evaluation: a batch of prompts decoded as a running batch gives transformers'
``generate`` replies, greedy and sampled after the same seed, in the reference layout and in a chat template."""

from __future__ import annotations

import pytest
import torch

from persona.model.decoding import Bot, decode
from persona.model.generation import DecodingArguments, prompt_inputs
from tests.conftest import load_folder, transformers_generate

CHATS = [
    (["i like cats.", "i am a nurse."], ["hello! what do you do?"]),
    (["i live in paris."], ["hi.", "hey, how are you?", "good. where do you live? i live in a big city."]),
    (["i play chess every day."], ["do you have pets?"]),
]
SETTINGS = {
    "greedy": DecodingArguments(do_sample=False, max_length=12),
    "the reference's sampling": DecodingArguments(max_length=12),
    "sampling with penalties": DecodingArguments(
        temperature=1.0,
        top_k=20,
        top_p=0.95,
        max_length=12,
        min_length=3,
        repetition_penalty=1.3,
        presence_penalty=0.5,
        frequency_penalty=0.3,
    ),
}


@pytest.fixture(params=["reference layout", "chat template"])
def loaded(request, trained_model_dir, template_trained):
    return load_folder(trained_model_dir if request.param == "reference layout" else template_trained)


@pytest.mark.parametrize("setting", SETTINGS)
def test_a_batch_decodes_as_generate_decodes_it(loaded, setting):
    """Three prompts of different lengths together: the same replies (ids, and whether each ended) as ``generate``
    gives for them after the same seed, rows ending at different steps included."""
    decoding = SETTINGS[setting]
    prompts = [prompt_inputs(persona, history, loaded, decoding.max_length) for persona, history in CHATS]
    torch.manual_seed(7)
    expected = transformers_generate(loaded, prompts, decoding)
    torch.manual_seed(7)
    assert decode(loaded, prompts, decoding) == expected


def test_the_bots_next_turn_reads_only_what_it_adds(loaded):
    """persona-chat's bot keeps its turns' prompts: the second turn reuses the whole first prompt."""
    bot = Bot(loaded, DecodingArguments(do_sample=False, max_length=6), max_history=4)
    persona, history = CHATS[0]
    first = bot.reply(persona, history)
    bot.reply(persona, [*history, first, "nice. and what do you like?"])
    assert bot.prefixes.reused == len(prompt_inputs(persona, history, loaded, 6)["input_ids"])
