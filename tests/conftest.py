"""Shared fixtures: everything offline, tiny models from configs, the quickstart tokenizer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "persona" / "resources" / "quickstart"
SHARED = REPO.parent / "shared"
TINY_GPT2 = {
    "model_type": "gpt2",
    "n_layer": 2,
    "n_embd": 32,
    "n_head": 2,
    "n_positions": 128,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "summary_first_dropout": 0.0,
}
TINY_OPENAI_GPT = {
    "model_type": "openai-gpt",
    "n_layer": 2,
    "n_embd": 32,
    "n_head": 2,
    "n_positions": 128,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "summary_first_dropout": 0.0,
}
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
}


def tiny_train_args(output_dir: Path, *extra: str) -> list[str]:
    """persona-train arguments for a tiny GPT-2 on the quickstart corpus, offline; ``extra`` adds or overrides."""
    return [
        "--model_config",
        json.dumps(TINY_GPT2),
        "--tokenizer_name_or_path",
        str(QUICKSTART / "tokenizer"),
        "--dataset_path",
        str(QUICKSTART),
        "--dataset_cache",
        str(output_dir.parent / "cache"),
        "--output_dir",
        str(output_dir),
        "--report_to",
        "none",
        *extra,
    ]


def needs_shared(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (the ../shared folder beside the repository holds it)")
    return path


@pytest.fixture(scope="session")
def tokenizer():
    """The quickstart tokenizer with the persona special tokens."""
    from transformers import AutoTokenizer

    from persona.data.special_tokens import add_special_tokens

    tok = AutoTokenizer.from_pretrained(QUICKSTART / "tokenizer")
    add_special_tokens(tok)
    return tok


def build_tiny(config: dict):
    """A model built from ``config`` by load_for_training with the quickstart tokenizer, seeded, in eval mode."""
    import torch

    from persona.configs import ModelArguments
    from persona.model.loading import load_for_training

    torch.manual_seed(0)
    return load_for_training(
        ModelArguments(model_config=config, tokenizer_name_or_path=str(QUICKSTART / "tokenizer"))
    ).model.eval()


def as_loaded(model, tokenizer, token_types: bool = True):
    """``model`` and ``tokenizer`` as the LoadedModel that loading gives every command."""
    from persona.data.input_layouts import ReferenceLayout
    from persona.model.facts import PersonaFacts
    from persona.model.loading import LoadedModel, max_positions

    layout = ReferenceLayout.for_tokenizer(tokenizer)
    return LoadedModel(
        model, tokenizer, layout, max_positions(model.config), token_types, PersonaFacts.of(model.config)
    )


def transformers_generate(loaded, prompts: list[dict], decoding) -> list[tuple[list[int], bool]]:
    """The oracle of persona's decoding loop: each prompt's reply ids (end token excluded) and whether it ended, by
    transformers' ``model.generate`` over the prompts left-padded together, with the same generation config and
    processors."""
    import torch

    from persona.model.running_batch import left_padded

    ids = loaded.ids
    input_ids, mask = left_padded([p["input_ids"] for p in prompts], ids.pad)
    types = {}
    if loaded.token_types:
        types["token_type_ids"] = left_padded([p["token_type_ids"] for p in prompts], ids.pad)[0]
    with torch.no_grad():
        output = loaded.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            generation_config=decoding.generation_config(loaded),
            logits_processor=decoding.logits_processors(input_ids.shape[1]),
            **types,
        )
    rows = output[:, input_ids.shape[1] :].tolist()
    return [(row[: row.index(ids.eos)], True) if ids.eos in row else (row, False) for row in rows]


def load_folder(path):
    """The trained model in ``path``, loaded as persona-chat and persona-eval load it."""
    from persona.configs import ModelArguments
    from persona.model.loading import load_for_inference

    return load_for_inference(ModelArguments(model_name_or_path=str(path)))


@pytest.fixture
def tiny_model(tokenizer):
    """A 2-layer GPT-2 double-heads model with the special tokens, dropout off."""
    return build_tiny(TINY_GPT2)


@pytest.fixture
def tiny_openai_gpt(tokenizer):
    """A 2-layer openai-gpt double-heads model (the reference's default family), dropout off."""
    return build_tiny(TINY_OPENAI_GPT)


@pytest.fixture
def tiny_llama(tokenizer):
    """A 2-layer Llama (any causal LM) with persona's multiple-choice head and the special tokens."""
    return build_tiny(TINY_LLAMA)


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory):
    """A tiny model trained for one step by persona-train (its output folder), shared by the tests that read one."""
    from persona.commands.train import main as train_main

    out = tmp_path_factory.mktemp("trained") / "run"
    assert (
        train_main(
            tiny_train_args(
                out,
                "--max_train_dialogs",
                "8",
                "--max_eval_dialogs",
                "2",
                "--eval_num_candidates",
                "4",
                "--max_steps",
                "1",
            )
        )
        == 0
    )
    return out


def write_conversations(path: Path, conversations: list[dict]) -> Path:
    """Write conversations (``personas``, ``utterances``) as JSONL."""
    path.write_text("".join(json.dumps(c) + "\n" for c in conversations))
    return path


CONVERSATIONS = [
    {
        "personas": [["i like cats.", "i am a nurse."], ["i live in paris.", "i play chess."]],
        "utterances": [
            "hi there!",
            "hello, where are you from?",
            "i am a nurse from ohio.",
            "i live in paris, i play chess.",
        ],
    },
    {
        "personas": [["i eat pizza.", "i have a dog."], ["i drive a truck.", "i love jazz."]],
        "utterances": ["good morning.", "morning! what music do you like?", "pop, and you?", "jazz, always jazz."],
    },
]


TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> "
    "{{ m['content'] }}{% if m['role'] != 'system' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="session")
def plain_chat_model(tmp_path_factory):
    """A tiny Llama that persona never trained: plain transformers, the quickstart tokenizer with a chat template."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("plain") / "tiny-chat"
    tokenizer = AutoTokenizer.from_pretrained(QUICKSTART / "tokenizer")
    tokenizer.add_special_tokens(
        {"eos_token": "<|end|>", "additional_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>"]}
    )
    tokenizer.chat_template = TEMPLATE
    sizes = {k: v for k, v in TINY_LLAMA.items() if k != "model_type"}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", vocab_size=len(tokenizer), **sizes))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def template_trained(plain_chat_model, tmp_path_factory):
    """The tiny chat model trained a few steps by persona-train in its own chat template, with the likelihood prior."""
    from persona.commands.train import main as train_main

    out = tmp_path_factory.mktemp("template") / "run"
    data = write_conversations(out.parent / "chats.jsonl", CONVERSATIONS * 3)
    argv = ["--model_name_or_path", str(plain_chat_model), "--dataset_path", str(data), "--validation_split_size", "2"]
    argv += ["--input_layout", "chat_template", "--likelihood_prior", "true", "--max_steps", "2"]
    argv += ["--output_dir", str(out), "--report_to", "none", "--dataset_cache", str(out.parent / "cache")]
    assert train_main([*argv, "--eval_num_candidates", "3"]) == 0
    return out


@pytest.fixture
def join_sizes(monkeypatch) -> list[int]:
    """The number of rows of each join of any running batch (:meth:`RunningBatch.join`) while the test runs."""
    from persona.model.running_batch import RunningBatch

    sizes, join = [], RunningBatch.join

    def counted(self, prompts):
        sizes.append(len(prompts))
        return join(self, prompts)

    monkeypatch.setattr(RunningBatch, "join", counted)
    return sizes
