"""Any causal LM as a persona bot: a tiny random Llama trains, round-trips through save/load, and trains with LoRA."""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest
import torch
from safetensors import safe_open

from persona.commands.train import main as train_main
from persona.configs import ModelArguments
from persona.data import PersonaCollator
from persona.data.input_layouts import ReferenceLayout
from persona.data.special_tokens import special_ids
from persona.model.decoding import generate_replies
from persona.model.dual_heads import DualPath
from persona.model.generation import DecodingArguments, prompt_inputs
from persona.model.lora import merged, with_lora
from persona.training.trainer import dual_loss
from tests.conftest import TINY_GPT2, TINY_LLAMA, TINY_OPENAI_GPT, as_loaded, build_tiny, load_folder, tiny_train_args
from tests.test_fast_path import _examples


def test_save_and_load_give_the_same_outputs(tiny_llama, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    tiny_llama.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        assert "multiple_choice_head.summary.weight" in weights.keys()
    loaded = load_folder(tmp_path).model
    batch = PersonaCollator(special_ids(tokenizer), packed=True)(_examples(tokenizer))
    with torch.no_grad():
        before, after = tiny_llama(**batch, dual_path=DualPath.PACKED), loaded(**batch, dual_path=DualPath.PACKED)
    for name in ("nll_sum", "tokens", "mc_logits"):
        assert torch.equal(before[name], after[name]), name
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)  # plain transformers: the causal LM without the head
    ids = torch.tensor([[special_ids(tokenizer).bos, 10, 11, 12]])
    assert torch.allclose(plain(input_ids=ids).logits, loaded(input_ids=ids).logits)


@pytest.mark.parametrize("config", [TINY_GPT2, TINY_OPENAI_GPT, TINY_LLAMA], ids=lambda c: c["model_type"])
def test_generation_feeds_the_token_types_of_the_layout(config, tokenizer):
    """Every forward of generate gets the prompt's token types (left-padded), then the bot's type for each new
    token; a batch gives what each prompt gives alone; and the types change what the model predicts."""
    model = build_tiny(config)
    decoding = DecodingArguments(do_sample=False, max_length=4, min_length=4)
    dialogs = [
        (["i like cats."], ["hi! who are you?"]),
        (["i am tall.", "i love jazz."], ["hello.", "hi!", "what music?"]),
    ]
    seen = []
    original = model.forward

    @functools.wraps(original)
    def recording(*args, **kwargs):
        seen.append((kwargs["input_ids"].clone(), kwargs.get("token_type_ids")))
        return original(*args, **kwargs)

    model.forward = recording
    loaded = as_loaded(model, tokenizer)
    batched = generate_replies(loaded, dialogs, decoding)
    ids = special_ids(tokenizer)
    prompts = [prompt_inputs(p, h, loaded, decoding.max_length) for p, h in dialogs]
    first_ids, first_types = seen[0]
    assert first_types is not None and len(seen) == 4
    for row, prompt in enumerate(prompts):
        n = len(prompt["input_ids"])
        assert (
            first_ids[row, -n:].tolist() == prompt["input_ids"]
            and first_types[row, -n:].tolist() == prompt["token_type_ids"]
        )
        assert prompt["input_ids"][-1] == prompt["token_type_ids"][-1] == ids.speaker1  # the bot's turn
    for step_ids, step_types in seen[1:]:  # one new token a step (GPT-2, Llama) or the whole row again (openai-gpt)
        assert step_types.shape == step_ids.shape and (step_types[:, -1] == ids.speaker1).all()
    model.forward = original
    assert batched == [generate_replies(loaded, [d], decoding)[0] for d in dialogs]
    prompt = prompts[1]
    with torch.no_grad():
        typed = model(
            input_ids=torch.tensor([prompt["input_ids"]]), token_type_ids=torch.tensor([prompt["token_type_ids"]])
        ).logits
        untyped = model(input_ids=torch.tensor([prompt["input_ids"]])).logits
    assert not torch.allclose(typed, untyped)


def test_a_tiny_llama_trains_with_persona_train(tmp_path):
    out = tmp_path / "run"
    args = [
        "--max_train_dialogs",
        "8",
        "--max_eval_dialogs",
        "2",
        "--eval_num_candidates",
        "4",
        "--max_steps",
        "3",
        "--learning_rate",
        "1e-3",
    ]
    assert train_main([*tiny_train_args(out, *args), "--model_config", json.dumps(TINY_LLAMA)]) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_num_candidates"] == 4 and results["eval_perplexity"] > 1
    loaded = load_folder(out)
    assert type(loaded.model).__name__ == "LlamaForCausalLM" and loaded.tokenizer.chat_template


def test_lora_trains_only_adapters_the_head_and_the_special_token_rows(tokenizer):
    from tests.conftest import build_tiny

    model = build_tiny(TINY_LLAMA).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    lora_args = ModelArguments(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    lora = with_lora(model, lora_args, ReferenceLayout.for_tokenizer(tokenizer))
    trainable = [name for name, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all(
        ("lora_" in n) or ("trainable_tokens" in n) or ("multiple_choice_head.modules_to_save" in n) for n in trainable
    )
    assert any("lora_" in n for n in trainable) and any("trainable_tokens" in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    batch = PersonaCollator(special_ids(tokenizer), packed=True)(_examples(tokenizer))
    for _ in range(2):
        loss, _, _ = dual_loss(lora(**batch, dual_path=DualPath.PACKED), batch["mc_labels"], 1.0, 1.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = dict(merged(lora).named_parameters())
    special = sorted(set(dataclasses.astuple(special_ids(tokenizer))))
    embedding = "model.embed_tokens.weight"
    changed_rows = (after[embedding] != before[embedding]).any(-1).nonzero().flatten().tolist()
    assert changed_rows == special  # only the special tokens' rows of the vocabulary moved
    assert not torch.equal(after["multiple_choice_head.summary.weight"], before["multiple_choice_head.summary.weight"])
    assert not torch.equal(
        after["model.layers.0.self_attn.q_proj.weight"], before["model.layers.0.self_attn.q_proj.weight"]
    )  # merged
    assert torch.equal(after["model.norm.weight"], before["model.norm.weight"])  # not adapted: frozen


def test_persona_train_with_lora_saves_a_merged_plain_model(tmp_path):
    out = tmp_path / "run"
    args = ["--max_train_dialogs", "8", "--max_eval_dialogs", "2", "--eval_num_candidates", "4", "--max_steps", "2"]
    argv = [
        *tiny_train_args(out, *args),
        "--model_config",
        json.dumps(TINY_LLAMA),
        "--use_peft",
        "true",
        "--lora_r",
        "4",
    ]
    assert train_main(argv) == 0
    with safe_open(out / "model.safetensors", "pt") as weights:
        names = list(weights.keys())
    assert "multiple_choice_head.summary.weight" in names and not [
        n for n in names if "lora" in n or "base_model" in n
    ]
    assert not (out / "adapter_config.json").exists()
    assert type(load_folder(out).model).__name__ == "LlamaForCausalLM"


def test_lora_trains_the_likelihood_priors_scale(tmp_path):
    """persona-train with LoRA and the likelihood prior: the prior's scale (a bare parameter, not a module PEFT can
    save) trains like the head and is saved moved from its start of 1."""
    out = tmp_path / "run"
    args = ["--max_train_dialogs", "8", "--max_eval_dialogs", "2", "--max_steps", "3", "--learning_rate", "0.05"]
    argv = [*tiny_train_args(out, *args), "--use_peft", "true", "--lora_r", "4", "--likelihood_prior", "true"]
    assert train_main([*argv, "--model_config", json.dumps(TINY_LLAMA)]) == 0
    with safe_open(out / "model.safetensors", "pt") as weights:
        scale = float(weights.get_tensor("persona_prior_scale"))
    assert abs(scale - 1.0) > 1e-3


def test_the_shared_smollm2_gguf_loads_as_float_weights_that_continue_sensibly_and_save_for_plain_transformers(
    tmp_path,
):
    """The gguf_file path: de-quantized on load, the quantizer detached, trains as float32, saves safetensors."""
    from transformers import AutoModelForCausalLM

    from persona.model.loading import load_for_training
    from tests.conftest import needs_shared

    folder = needs_shared("models", "smollm2-135m-instruct")
    loaded = load_for_training(
        ModelArguments(model_name_or_path=str(folder), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    )
    model, tokenizer = loaded.model, loaded.tokenizer
    assert {p.dtype for p in model.parameters()} == {torch.float32} and getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None and type(model).__name__ == "LlamaForCausalLM"
    prompt = tokenizer("The capital of France is", return_tensors="pt", add_special_tokens=False)
    greedy = model.eval().generate(
        **prompt, max_new_tokens=3, do_sample=False, generation_config=None, eos_token_id=None, suppress_tokens=None
    )
    assert "Paris" in tokenizer.decode(greedy[0, prompt["input_ids"].shape[1] :])
    model.save_pretrained(tmp_path)
    assert [p.name for p in tmp_path.glob("*.safetensors")] and not list(tmp_path.glob("*.gguf"))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.allclose(plain(**prompt).logits, model(**prompt).logits, atol=1e-5)


def test_presence_and_frequency_penalties_are_openais_over_the_reply_only():
    from persona.model.generation import DecodingArguments

    (penalties,) = DecodingArguments(presence_penalty=0.5, frequency_penalty=2.0).logits_processors(prompt_length=3)
    input_ids = torch.tensor(
        [[4, 4, 9, 4, 7, 4], [0, 1, 2, 3, 3, 3]]
    )  # prompts of 3 (token 4 in the first), replies after
    scores = penalties(input_ids, torch.zeros(2, 10))
    assert scores[0, 4].item() == -(0.5 + 2.0 * 2) and scores[0, 7].item() == -(0.5 + 2.0) and scores[0, 9].item() == 0
    assert (
        scores[1, 3].item() == -(0.5 + 2.0 * 3)
        and scores[1, 2].item() == 0
        and not DecodingArguments().logits_processors(3)
    )
