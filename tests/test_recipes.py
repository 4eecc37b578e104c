"""Every shipped recipe runs as written: only the model and a corpus that cannot be read offline are swapped for
tiny local stand-ins on the command line (plus a few steps, a few dialogs and temporary folders); reporting,
evaluation and save strategies, precision, LoRA and everything else stay as the recipe says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from persona.commands.cli import parse_recipe
from persona.commands.eval import main as eval_main
from persona.commands.train import main as train_main
from persona.data.sources import is_url
from persona.hub_names import is_hub_id
from tests.conftest import QUICKSTART, REPO, TINY_GPT2, TINY_LLAMA, TINY_OPENAI_GPT

TRAIN_RECIPES = sorted((REPO / "recipes").glob("*/train.yaml"))
EVAL_RECIPES = sorted(p for p in (REPO / "recipes").glob("*/*.yaml") if p.name != "train.yaml")  # eval.yaml and others
STAND_INS = {"gpt2": TINY_GPT2, "openai-gpt": TINY_OPENAI_GPT, "llama": TINY_LLAMA}
LLAMA_LIKE = ("smollm", "llama", "qwen", "mistral")


def family(recipe: dict) -> str:
    """The stand-in family of a recipe's model: its model_config's type, else told by the model's name (GPT-2 by
    default)."""
    if recipe.get("model_config"):
        return recipe["model_config"]["model_type"]
    name = str(recipe.get("model_name_or_path", "openai-gpt")).lower()
    return "openai-gpt" if "openai-gpt" in name else "llama" if any(word in name for word in LLAMA_LIKE) else "gpt2"


def readable_offline(path: str | None) -> bool:
    """Whether a recipe's corpus is a local path that exists here (PersonaChat's URL and Hub ids are not)."""
    return bool(path) and not is_url(path) and not is_hub_id(path) and (REPO / path).exists()


@pytest.fixture(scope="module")
def personachat_stand_in(tmp_path_factory) -> Path:
    """The quickstart conversations in the reference's PersonaChat JSON layout (train and valid), for recipes that
    read PersonaChat."""
    from persona.data.sources import read_corpus

    corpus = read_corpus(str(QUICKSTART))
    layout = {
        split: [
            {
                "personality": d["persona"],
                "utterances": [{"history": t["history"], "candidates": t["candidates"]} for t in d["turns"]],
            }
            for d in dialogs
        ]
        for split, dialogs in corpus.items()
    }
    path = tmp_path_factory.mktemp("personachat") / "personachat_self_original.json"
    path.write_text(json.dumps(layout))
    return path


def stand_in_arguments(recipe: dict, corpus: Path, folder: Path) -> list[str]:
    """The command-line swaps: the corpus (when not readable offline), the cache, the output folder, a few dialogs."""
    swaps = ["--dataset_cache", str(folder / "cache"), "--output_dir", str(folder / "out"), "--max_eval_dialogs", "2"]
    if not readable_offline(recipe.get("dataset_path")):
        swaps += ["--dataset_path", str(corpus)]
    if recipe.get("eval_dataset_path") and not readable_offline(recipe["eval_dataset_path"]):
        swaps += ["--eval_dataset_path", str(corpus)]
    return swaps


@pytest.mark.parametrize("recipe_path", TRAIN_RECIPES, ids=lambda p: p.parent.name)
def test_train_recipe_runs_as_written(recipe_path, personachat_stand_in, tmp_path, monkeypatch, plain_chat_model):
    monkeypatch.chdir(REPO)  # recipes name their local files relative to the repository
    recipe = yaml.safe_load(recipe_path.read_text())
    # a recipe in the chat-template layout gets a stand-in tokenizer that has a chat template
    tokenizer = plain_chat_model if recipe.get("input_layout") == "chat_template" else QUICKSTART / "tokenizer"
    model = ["--model_config", json.dumps(STAND_INS[family(recipe)]), "--tokenizer_name_or_path", str(tokenizer)]
    argv = [
        str(recipe_path),
        *model,
        *stand_in_arguments(recipe, personachat_stand_in, tmp_path),
        "--max_train_dialogs",
        "6",
        "--max_steps",
        "2",
    ]
    assert train_main(argv) == 0
    out = tmp_path / "out"
    written = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "persona_recipe.yaml",
        "train_results.json",
        "eval_results.json",
        "README.md",
    } <= written
    if recipe.get("save_strategy", "steps") != "no":
        assert list(out.glob("checkpoint-*/model.safetensors")), "the recipe's save strategy wrote no checkpoint"
    if recipe.get("report_to") == "tensorboard":
        assert list(out.rglob("events.out.tfevents.*")), "report_to: tensorboard wrote no event file"
    (_, _, run), _ = parse_recipe([str(recipe_path)])
    assert json.loads((out / "train_results.json").read_text())["mixed_precision"] == (
        "bf16" if run.bf16 else "fp16" if run.fp16 else "no"
    )


@pytest.fixture(scope="module")
def stand_in_models(tmp_path_factory) -> dict[str, Path]:
    """One tiny trained model of each family, the stand-ins of the evaluation recipes' models."""
    from tests.conftest import tiny_train_args

    folders = {}
    for name, config in STAND_INS.items():
        out = tmp_path_factory.mktemp(name) / "run"
        args = [
            "--model_config",
            json.dumps(config),
            "--max_train_dialogs",
            "4",
            "--max_eval_dialogs",
            "1",
            "--eval_num_candidates",
            "4",
            "--max_steps",
            "1",
        ]
        assert train_main(tiny_train_args(out, *args)) == 0
        folders[name] = out
    return folders


@pytest.mark.parametrize("recipe_path", EVAL_RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_eval_recipe_runs_as_written(recipe_path, personachat_stand_in, stand_in_models, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    recipe = yaml.safe_load(recipe_path.read_text())
    trained_with = recipe_path.parent / "train.yaml"
    model_family = family(yaml.safe_load(trained_with.read_text())) if trained_with.exists() else "gpt2"
    argv = [
        str(recipe_path),
        "--model_name_or_path",
        str(stand_in_models[model_family]),
        *stand_in_arguments(recipe, personachat_stand_in, tmp_path),
    ]
    assert eval_main(argv) == 0
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert results["num_candidates"] == recipe.get("eval_num_candidates", 20) and results["num_turns"]["hits"] > 0
    assert {"perplexity", "hits@1", "f1", "skipped"} <= set(results) and (tmp_path / "out" / "report.md").exists()


def test_gpt2_recipe_has_the_reference_reproduction_settings():
    (model_args, data_args, args), _ = parse_recipe([str(REPO / "recipes/gpt2/train.yaml"), "--output_dir", "x"])
    assert (
        model_args.model_name_or_path == "gpt2"
        and model_args.trust_remote_code is False
        and args.remove_unused_columns is False
    )
    assert (args.lm_coef, data_args.max_history, args.num_train_epochs, data_args.num_candidates) == (2.0, 2, 1, 4)
    assert (
        data_args.personality_permutations,
        args.per_device_train_batch_size,
        args.gradient_accumulation_steps,
    ) == (2, 2, 4)


def test_command_line_and_reference_aliases_override_the_recipe():
    (model_args, _, args), recipe = parse_recipe(
        [
            str(REPO / "recipes/gpt2/train.yaml"),
            "--lr",
            "1e-4",
            "--n_epochs",
            "2",
            "--max_norm",
            "0.5",
            "--model_checkpoint",
            "distilgpt2",
        ]
    )
    assert (args.learning_rate, args.num_train_epochs, args.max_grad_norm) == (1e-4, 2, 0.5)
    assert model_args.model_name_or_path == recipe["model_name_or_path"] == "distilgpt2"


def test_a_repeated_list_field_collects_its_values_and_a_repeated_scalar_keeps_the_last():
    from persona.commands.chat import ChatArguments
    from persona.configs import DataArguments
    from persona.model.generation import DecodingArguments

    (data, chat, _), _ = parse_recipe(
        ["--persona", "i like cats.", "--persona", "i am tall.", "--max_history", "3", "--max_history", "1"],
        (DataArguments, ChatArguments, DecodingArguments),
    )
    assert chat.persona == ["i like cats.", "i am tall."] and data.max_history == 1


def test_reference_defaults_without_a_recipe():
    (model_args, data_args, args), _ = parse_recipe([])
    assert model_args.model_name_or_path == "openai-gpt"
    assert (data_args.num_candidates, data_args.max_history, data_args.personality_permutations) == (2, 2, 1)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.learning_rate) == (4, 8, 6.25e-5)
    assert (args.lm_coef, args.mc_coef, args.max_grad_norm, args.num_train_epochs) == (1.0, 1.0, 1.0, 3)
