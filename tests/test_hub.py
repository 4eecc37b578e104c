"""Hub-ready models: the chat template against build_inputs, plain transformers, the model card, persona-push."""

from __future__ import annotations

import json
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.hf_api import RepoUrl

from persona.commands.push import main as push_main
from persona.commands.train import main as train_main
from persona.data import build_inputs
from persona.data.dialog import SILENCE
from persona.data.reference_template import add_chat_template
from persona.data.special_tokens import special_ids
from persona.data.tokenize import encode_texts
from tests.conftest import needs_shared, tiny_train_args

PERSONA = "i like cats and i am a nurse."
HISTORY = ["hi! how are you?", "good, and you?", "fine. what do you do?"]


def _messages(history):
    return [{"role": "system", "content": PERSONA}] + [
        {"role": ("user", "assistant")[i % 2], "content": h} for i, h in enumerate(history)
    ]


def _reference(tokenizer, history, reply=None):
    persona_ids = encode_texts(tokenizer, [PERSONA], leading_space=True)
    history_ids = encode_texts(tokenizer, history, leading_space=True)
    reply_ids = encode_texts(tokenizer, [reply], leading_space=True)[0] if reply else []
    return build_inputs(
        persona_ids, history_ids, reply_ids, special_ids(tokenizer), lm_labels=False, with_eos=reply is not None
    )["input_ids"]


@pytest.mark.parametrize("which", ["quickstart", "gpt2"])
def test_chat_template_renders_build_inputs(which, tokenizer):
    if which == "gpt2":
        from transformers import AutoTokenizer

        from persona.data.special_tokens import add_special_tokens

        tokenizer = AutoTokenizer.from_pretrained(needs_shared("tokenizers", "gpt2"))
        add_special_tokens(tokenizer)
    add_chat_template(tokenizer, leading_space=True)
    for history in (HISTORY, HISTORY[-1:], []):
        asked = tokenizer.apply_chat_template(
            _messages(history), add_generation_prompt=True, tokenize=True, return_dict=False
        )
        assert asked == _reference(tokenizer, history or [SILENCE])  # a bot that opens answers silence
        assert asked[-1] == special_ids(tokenizer).speaker1  # the bot, as in the reference
    answered = tokenizer.apply_chat_template(_messages([*HISTORY, "i am a nurse."]), tokenize=True, return_dict=False)
    assert answered == _reference(tokenizer, HISTORY, "i am a nurse.")
    assert answered[-1] == special_ids(tokenizer).eos


def test_plain_transformers_loads_and_prompts_the_saved_model(trained_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained_model_dir)
    model = AutoModelForCausalLM.from_pretrained(trained_model_dir)
    inputs = tokenizer.apply_chat_template(
        _messages(HISTORY), add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert inputs["input_ids"][0].tolist() == _reference(tokenizer, HISTORY)
    config = model.generation_config  # the reference's decoding, saved with the model
    assert (config.do_sample, config.temperature, config.top_p, config.max_new_tokens) == (True, 0.7, 0.9, 20)
    ids = special_ids(tokenizer)
    assert config.eos_token_id == ids.eos and set(config.suppress_tokens) >= {
        ids.bos,
        ids.pad,
        ids.speaker1,
        ids.speaker2,
    }
    torch.manual_seed(0)
    output = model.generate(**inputs)
    new = output[0, inputs["input_ids"].shape[1] :].tolist()
    assert 1 <= len(new) <= 20 and not {ids.bos, ids.pad, ids.speaker1, ids.speaker2} & set(new)


def test_model_card_carries_the_evaluation(trained_model_dir, tmp_path):
    from persona.training.model_card import model_card

    card = ModelCard(str(model_card(trained_model_dir, hub_model_id="alice/persona-tiny")))
    results = json.loads((trained_model_dir / "eval_results.json").read_text())
    published = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert published == {name: round(results[f"eval_{name}"], 4) for name in ("perplexity", "hits@1", "lm_hits@1")}
    assert {"persona-chat", "conversational"} <= set(card.data.tags) and card.data.model_name == "alice/persona-tiny"
    assert f"on {results['eval_num_turns']:,} turns" in card.text and "each with 4 candidates" in card.text
    assert 'AutoTokenizer.from_pretrained("alice/persona-tiny")' in card.text and "apply_chat_template" in card.text
    assert "| `max_steps` | `1` |" in card.text  # the recipe's hyperparameters

    evaluation = {
        "split": "valid",
        "perplexity": 12.5,
        "hits@1": 0.25,
        "hits@5": 0.75,
        "f1": 0.1875,
        "num_turns": {"perplexity": 40, "hits": 40, "f1": 30},
        "num_candidates": 20.0,
    }
    (tmp_path / "eval_results.json").write_text(json.dumps(evaluation))
    card = ModelCard(
        str(
            model_card(
                trained_model_dir, hub_model_id="alice/persona-tiny", eval_results=tmp_path / "eval_results.json"
            )
        )
    )
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "perplexity": 12.5,
        "hits@1": 0.25,
        "hits@5": 0.75,
        "f1": 0.1875,
    }
    assert "on 40 turns (valid), each with 20 candidates; F1 over 30 generated replies" in card.text


def test_persona_push_dry_run_writes_exactly_the_upload(trained_model_dir, tmp_path, capsys):
    folder = tmp_path / "upload"
    assert push_main([str(trained_model_dir), "--hub_model_id", "alice/persona-tiny", "--dry_run", str(folder)]) == 0
    names = sorted(p.name for p in folder.iterdir())
    assert {
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
        "generation_config.json",
    } <= set(names)
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))] and "trainer_state.json" not in names
    listing = capsys.readouterr().out
    assert "Would upload to alice/persona-tiny (public)" in listing and all(name in listing for name in names)
    assert push_main([str(trained_model_dir), "--dry_run", str(folder)]) == 2  # not empty: refused, nothing changed
    assert sorted(p.name for p in folder.iterdir()) == names


@pytest.fixture
def fake_hub(monkeypatch):
    """HfApi's create_repo and upload_folder replaced by recorders (each upload lists its folder at call time)."""
    calls = {"create_repo": [], "upload_folder": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append({"repo_id": repo_id, **kwargs})
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = {str(p.relative_to(folder_path)): p.read_bytes() for p in Path(folder_path).rglob("*") if p.is_file()}
        calls["upload_folder"].append({"repo_id": repo_id, "files": files, **kwargs})
        commit = type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()
        if not kwargs.get("run_as_future"):
            return commit
        future = Future()  # the Trainer pushes checkpoints in the background
        future.set_result(commit)
        return future

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_persona_push_uploads_one_commit(trained_model_dir, fake_hub):
    assert push_main([str(trained_model_dir), "--hub_model_id", "alice/persona-tiny", "--private", "true"]) == 0
    (repo,) = fake_hub["create_repo"]
    assert repo["repo_id"] == "alice/persona-tiny" and repo["private"] is True and repo["exist_ok"] is True
    (upload,) = fake_hub["upload_folder"]
    assert upload["repo_id"] == "alice/persona-tiny"
    assert {"README.md", "model.safetensors", "tokenizer.json", "config.json"} <= set(upload["files"])
    assert b"alice/persona-tiny" in upload["files"]["README.md"]


def test_train_pushes_through_the_trainer_and_never_writes_the_token(tmp_path, fake_hub, capsys):
    secret = "hf_" + "x" * 34
    out = tmp_path / "run"
    argv = tiny_train_args(
        out,
        "--max_train_dialogs",
        "4",
        "--max_eval_dialogs",
        "1",
        "--eval_num_candidates",
        "2",
        "--max_steps",
        "1",
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "alice/persona-pushed",
        "--hub_token",
        secret,
    )
    assert train_main(argv) == 0
    assert fake_hub["create_repo"][0]["repo_id"] == "alice/persona-pushed"
    upload = fake_hub["upload_folder"][-1]
    assert upload["repo_id"] == "alice/persona-pushed" and {
        "README.md",
        "model.safetensors",
        "eval_results.json",
    } <= set(upload["files"])
    assert b"model-index" in upload["files"]["README.md"]
    written = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    captured = capsys.readouterr()
    assert secret.encode() not in written and secret not in captured.out + captured.err
