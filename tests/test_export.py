"""persona-export: a trained model as one GGUF file that transformers' own GGUF reader reads back with the same
next-token logits, the file's chat template rendering exactly persona's input, and its special tokens."""

from __future__ import annotations

import json

import pytest
import torch

from persona.commands.export import main as export_main
from tests.conftest import QUICKSTART, load_folder, tiny_train_args

# transformers' GGUF reader gives GPT-2 its default 1024 positions whatever the file says (it maps the context length
# to n_ctx, not n_positions), so the GPT-2 read back here has GPT-2's own 1024; llama.cpp reads the length it is given.
GPT2_1024 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 1024}


@pytest.fixture(scope="module")
def untyped_gpt2(tmp_path_factory):
    """A tiny GPT-2 trained one step by persona-train in the reference layout without token types."""
    from persona.commands.train import main as train_main

    out = tmp_path_factory.mktemp("untyped") / "run"
    argv = tiny_train_args(out, "--max_train_dialogs", "8", "--max_eval_dialogs", "2", "--eval_num_candidates", "4")
    argv += ["--max_steps", "1", "--use_token_types", "false", "--model_config", json.dumps(GPT2_1024)]
    assert train_main(argv) == 0
    return out


def _prompts(count: int = 20) -> list[tuple[list[str], list[str]]]:
    """``count`` (persona, history) pairs of the quickstart's held-out conversations, the partner speaking last, short
    enough for the tiny models' positions (so that no turn is cut)."""
    prompts = []
    for line in (QUICKSTART / "valid_conversations.jsonl").read_text().splitlines():
        conversation = json.loads(line)
        utterances = conversation["utterances"]
        for end in (1, 3):
            prompts.append((conversation["personas"][1], utterances[:end]))
            if len(prompts) == count:
                return prompts
    return prompts


def _read_back(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return tokenizer, AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()


def _last_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


@pytest.fixture(params=["gpt2 reference layout", "llama own chat template"])
def trained(request, untyped_gpt2, template_trained):
    return untyped_gpt2 if request.param.startswith("gpt2") else template_trained


def test_an_f32_file_reads_back_with_the_saved_models_next_token_logits(trained, tmp_path):
    from persona.data.conversation import conversation_messages
    from persona.model.generation import prompt_inputs

    path = tmp_path / "bot.gguf"
    assert export_main([str(trained), "--gguf", str(path), "--outtype", "f32"]) == 0
    saved = load_folder(trained)
    tokenizer, model = _read_back(path)
    assert tokenizer.chat_template == saved.tokenizer.chat_template
    worst = 0.0
    for persona, history in _prompts():
        rendered = tokenizer.apply_chat_template(
            conversation_messages(persona, history), add_generation_prompt=True, tokenize=True, return_dict=False
        )
        assert rendered == list(prompt_inputs(persona, history, saved, 20)["input_ids"])
        worst = max(worst, (_last_logits(model, rendered) - _last_logits(saved.model, rendered)).abs().max().item())
    assert worst <= 1e-4


@pytest.mark.parametrize(("outtype", "agreeing"), [("f16", 20), ("q8_0", 19)])
def test_smaller_files_keep_the_next_token_in_most_prompts(
    untyped_gpt2, template_trained, tmp_path, outtype, agreeing
):
    """The measured agreement of the next token's argmax over 20 prompts, for both models (see the README)."""
    from persona.model.generation import prompt_inputs

    sizes = {}
    for name, folder in (("gpt2", untyped_gpt2), ("llama", template_trained)):
        for kind in ("f32", outtype):
            assert export_main([str(folder), "--gguf", str(tmp_path / f"{name}-{kind}.gguf"), "--outtype", kind]) == 0
            sizes[name, kind] = (tmp_path / f"{name}-{kind}.gguf").stat().st_size
        saved, (_, model) = load_folder(folder), _read_back(tmp_path / f"{name}-{outtype}.gguf")
        same = 0
        for persona, history in _prompts():
            ids = list(prompt_inputs(persona, history, saved, 20)["input_ids"])
            same += int(_last_logits(model, ids).argmax() == _last_logits(saved.model, ids).argmax())
        assert same >= agreeing, (name, outtype, same)
        assert sizes[name, outtype] < sizes[name, "f32"]


def test_the_file_carries_the_template_the_special_tokens_and_the_sampling_defaults(untyped_gpt2, tmp_path):
    from gguf import GGUFReader, TokenType

    path = tmp_path / "bot.gguf"
    assert export_main([str(untyped_gpt2), "--gguf", str(path)]) == 0
    fields = GGUFReader(path).fields
    value = {name: field.contents() for name, field in fields.items() if name != "tokenizer.ggml.merges"}
    saved = load_folder(untyped_gpt2)
    tokens, types = value["tokenizer.ggml.tokens"], value["tokenizer.ggml.token_type"]
    ids = {token: tokens.index(token) for token in ("<bos>", "<eos>", "<pad>", "<speaker1>", "<speaker2>")}
    assert ids == {token: saved.tokenizer.convert_tokens_to_ids(token) for token in ids}
    assert all(types[index] == TokenType.CONTROL for index in ids.values())
    assert value["general.architecture"] == "gpt2" and value["tokenizer.ggml.pre"] == "gpt-2"
    assert (
        value["tokenizer.ggml.bos_token_id"] == ids["<bos>"] and value["tokenizer.ggml.eos_token_id"] == ids["<eos>"]
    )
    assert value["tokenizer.ggml.padding_token_id"] == ids["<pad>"]
    assert value["tokenizer.ggml.eot_token_id"] == ids["<speaker2>"]  # the partner's turn ends the bot's reply
    assert value["tokenizer.ggml.add_bos_token"] is False  # the template writes <bos>
    assert value["tokenizer.chat_template"] == saved.tokenizer.chat_template
    generation = saved.model.generation_config
    assert value["general.sampling.temp"] == pytest.approx(generation.temperature)
    assert value["general.sampling.top_p"] == pytest.approx(generation.top_p)
    assert value["general.file_type"] == 1  # f16 by default


def test_a_model_trained_with_token_types_is_refused_in_one_line(trained_model_dir, tmp_path, capsys):
    path = tmp_path / "out" / "bot.gguf"
    assert export_main([str(trained_model_dir), "--gguf", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "trained with token types" in err and "--use_token_types false" in err
    assert not path.parent.exists() or not any(path.parent.iterdir())


def test_a_missing_output_or_a_folder_that_is_no_model_is_a_clear_error(untyped_gpt2, tmp_path, capsys):
    assert export_main([str(untyped_gpt2)]) == 2
    assert "--gguf OUT.gguf is required" in capsys.readouterr().err
    assert export_main([str(tmp_path), "--gguf", str(tmp_path / "x.gguf")]) == 2
    assert "not a model folder (no config.json)" in capsys.readouterr().err
    assert export_main([str(untyped_gpt2), "--gguf", str(tmp_path)]) == 2
    assert "--gguf names a folder" in capsys.readouterr().err
    assert export_main([str(untyped_gpt2), "--gguf", str(tmp_path / "x.gguf"), "--outtype", "q4"]) == 2
    assert "invalid choice: 'q4'" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".tmp-*"))


def test_llama_cpp_renders_tokenizes_and_answers_as_persona_chat(trained, tmp_path):
    """The exported file in llama.cpp itself (llama-cpp-python): its chat template rendered by llama.cpp's own Jinja
    formatter and tokenized with the special tokens gives persona's input ids, the next-token logits agree, and the
    greedy reply (persona's suppressed tokens barred, as persona-chat bars them) is persona-chat's."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is absent: pip install -e '.[llama]'")
    import numpy as np
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from persona.data.conversation import conversation_messages
    from persona.model.decoding import Bot
    from persona.model.generation import DecodingArguments, prompt_inputs

    path = tmp_path / "bot.gguf"
    assert export_main([str(trained), "--gguf", str(path), "--outtype", "f32"]) == 0
    saved = load_folder(trained)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=saved.max_positions, logits_all=True, verbose=False)
    special = {
        name: llm.detokenize([token], special=True).decode()
        for name, token in (("bos_token", llm.token_bos()), ("eos_token", llm.token_eos()))
    }
    render = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], add_generation_prompt=True, **special)
    suppressed = list(saved.model.generation_config.suppress_tokens or [])

    def barred(_, scores):
        scores[suppressed] = -np.inf
        return scores

    bot = Bot(saved, DecodingArguments(do_sample=False, max_length=12), 2)
    for persona, history in _prompts(5):
        ids = list(prompt_inputs(persona, history, saved, 12)["input_ids"])
        prompt = render(messages=conversation_messages(persona, history)).prompt
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
        llm.reset()
        llm.eval(ids)
        expected = _last_logits(saved.model, ids).numpy()
        assert np.abs(np.asarray(llm.scores[len(ids) - 1]) - expected).max() <= 1e-4
        reply = []
        for token in llm.generate(ids, top_k=1, temp=0.0, logits_processor=llama_cpp.LogitsProcessorList([barred])):
            if token == llm.token_eos() or len(reply) == 12:
                break
            reply.append(token)
        assert saved.tokenizer.decode(reply, skip_special_tokens=True).strip() == bot.reply(persona, history)
