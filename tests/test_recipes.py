"""Every shipped recipe parses into the dataclasses, and the seed's aliases map to Trainer fields."""

from __future__ import annotations

import pytest

from persona.configs import parse_recipe
from tests.conftest import REPO

TRAIN_RECIPES = sorted((REPO / "recipes").glob("*/train.yaml"))


@pytest.mark.parametrize("recipe", TRAIN_RECIPES, ids=lambda p: p.parent.name)
def test_train_recipe_parses(recipe):
    (model_args, data_args, training_args), _ = parse_recipe([str(recipe)])
    assert training_args.remove_unused_columns is False
    assert model_args.trust_remote_code is False


def test_gpt2_recipe_has_the_seed_reproduction_settings():
    (model_args, data_args, args), _ = parse_recipe([str(REPO / "recipes/gpt2/train.yaml"), "--output_dir", "x"])
    assert model_args.model_name_or_path == "gpt2"
    assert (args.lm_coef, data_args.max_history, args.num_train_epochs, data_args.num_candidates) == (2.0, 2, 1, 4)
    assert (data_args.personality_permutations, args.per_device_train_batch_size, args.gradient_accumulation_steps) == (2, 2, 4)


def test_command_line_and_seed_aliases_override_the_recipe():
    (model_args, _, args), recipe = parse_recipe(
        [str(REPO / "recipes/gpt2/train.yaml"), "--lr", "1e-4", "--n_epochs", "2", "--max_norm", "0.5", "--model_checkpoint", "distilgpt2"]
    )
    assert (args.learning_rate, args.num_train_epochs, args.max_grad_norm) == (1e-4, 2, 0.5)
    assert model_args.model_name_or_path == recipe["model_name_or_path"] == "distilgpt2"


def test_a_repeated_list_field_collects_its_values_and_a_repeated_scalar_keeps_the_last():
    from persona.chat import ChatArguments
    from persona.generation import DecodingArguments

    (chat, _), _ = parse_recipe(["--persona", "i like cats.", "--persona", "i am tall.", "--max_history", "3", "--max_history", "1"], (ChatArguments, DecodingArguments))
    assert chat.persona == ["i like cats.", "i am tall."] and chat.max_history == 1


def test_seed_defaults_without_a_recipe():
    (model_args, data_args, args), _ = parse_recipe([])
    assert model_args.model_name_or_path == "openai-gpt"
    assert (data_args.num_candidates, data_args.max_history, data_args.personality_permutations) == (2, 2, 1)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.learning_rate) == (4, 8, 6.25e-5)
    assert (args.lm_coef, args.mc_coef, args.max_grad_norm, args.num_train_epochs) == (1.0, 1.0, 1.0, 3)
