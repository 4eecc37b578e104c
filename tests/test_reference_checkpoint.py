"""Checkpoints saved by transfer-learning-conv-ai (the reference) load in persona-eval and persona-chat and are
fed exactly the reference's tensors."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, GPT2DoubleHeadsModel, OpenAIGPTDoubleHeadsModel

from persona.commands.eval import main as eval_main
from persona.configs import DataArguments
from persona.data import PersonaCollator, prepare_corpus
from persona.data.special_tokens import special_ids
from tests.conftest import QUICKSTART, TINY_GPT2, TINY_OPENAI_GPT, load_folder
from tests.test_layout import reference_build_input_from_segments

# the reference's train.py, word for word
ATTR_TO_SPECIAL_TOKEN = {
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "pad_token": "<pad>",
    "additional_special_tokens": ["<speaker1>", "<speaker2>"],
}
CLASSES = {"gpt2": (GPT2DoubleHeadsModel, TINY_GPT2), "openai-gpt": (OpenAIGPTDoubleHeadsModel, TINY_OPENAI_GPT)}


def _reference_checkpoint(folder, family: str):
    """A double-heads model saved as the reference's train.py saves one: its tokenizer given the special tokens
    with add_special_tokens, the embeddings resized, no persona field in the config."""
    model_class, sizes = CLASSES[family]
    tokenizer = AutoTokenizer.from_pretrained(QUICKSTART / "tokenizer")
    tokenizer.add_special_tokens(ATTR_TO_SPECIAL_TOKEN)
    sizes = dict(sizes)
    config = AutoConfig.for_model(sizes.pop("model_type"), **sizes)
    torch.manual_seed(0)
    model = model_class(config)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert not [key for key in json.loads((folder / "config.json").read_text()) if key.startswith("persona")]
    return tokenizer


def _reference_encode(tokenizer, text: str) -> list[int]:
    """The reference's tokenize(): tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)), no leading space."""
    return tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))


@pytest.mark.parametrize("family", CLASSES)
def test_persona_chat_feeds_a_reference_checkpoint_the_reference_prompt(family, tmp_path):
    from persona.model.decoding import Bot
    from persona.model.generation import DecodingArguments

    reference_tokenizer = _reference_checkpoint(tmp_path, family)
    loaded = load_folder(tmp_path)
    model, tokenizer = loaded.model, loaded.tokenizer
    assert type(model).__name__ == CLASSES[family][0].__name__
    persona, history = ["i like cats.", "i am a nurse."], ["hi! what do you do?", "i sing.", "nice, where?"]
    seen = []  # each forward's inputs: the first reads the prompt
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)
    reply = Bot(loaded, DecodingArguments(do_sample=False, max_length=5), max_history=2).reply(persona, history)
    assert isinstance(reply, str)
    expected = reference_build_input_from_segments(
        [_reference_encode(reference_tokenizer, s) for s in persona],
        [_reference_encode(reference_tokenizer, h) for h in history],
        [],
        tokenizer_ids(tokenizer),
        with_eos=False,
    )
    assert seen[0]["input_ids"][0].tolist() == expected["input_ids"]
    assert seen[0]["token_type_ids"][0].tolist() == expected["token_type_ids"]


def tokenizer_ids(tokenizer):
    from persona.data.special_tokens import special_ids

    return special_ids(tokenizer)


@pytest.mark.parametrize("family", CLASSES)
def test_persona_eval_scores_a_reference_checkpoint_on_the_reference_tensors(family, tmp_path):
    reference_tokenizer = _reference_checkpoint(tmp_path / "model", family)
    loaded = load_folder(tmp_path / "model")
    tokenizer = loaded.tokenizer
    args = DataArguments(
        dataset_path=str(QUICKSTART), dataset_cache=str(tmp_path / "cache"), max_eval_dialogs=2, eval_num_candidates=3
    )
    corpus = prepare_corpus(args, loaded.layout, max_positions=loaded.max_positions, roles=("eval",))
    batch = PersonaCollator(special_ids(tokenizer), packed=False)(list(corpus.features["eval"]))
    turns = [(d["persona"], t) for d in corpus.dialogs["eval"] for t in d["turns"]]
    assert batch["input_ids"].shape[0] == len(turns)
    for row, (persona, turn) in enumerate(turns):
        encode = lambda texts: [_reference_encode(reference_tokenizer, text) for text in texts]  # noqa: E731
        for c, reply in enumerate(encode(turn["candidates"])):
            gold = c == len(turn["candidates"]) - 1
            expected = reference_build_input_from_segments(
                encode(persona), encode(turn["history"]), reply, tokenizer_ids(tokenizer), lm_labels=gold
            )
            n = len(expected["input_ids"])
            assert batch["input_ids"][row, c, :n].tolist() == expected["input_ids"]
            assert batch["token_type_ids"][row, c, :n].tolist() == expected["token_type_ids"]
            assert batch["labels"][row, c, :n].tolist() == expected["lm_labels"]
            assert batch["mc_token_ids"][row, c].item() == expected["mc_token_ids"]
    out = tmp_path / "eval"
    argv = [
        "--model_name_or_path",
        str(tmp_path / "model"),
        "--dataset_path",
        str(QUICKSTART),
        "--dataset_cache",
        str(tmp_path / "cache"),
        "--max_eval_dialogs",
        "2",
        "--output_dir",
        str(out),
        "--do_sample",
        "false",
        "--max_length",
        "5",
    ]
    assert eval_main(argv) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert results["num_candidates"] == 20 and results["token_types"] is True and 0 <= results["hits@1"] <= 1
