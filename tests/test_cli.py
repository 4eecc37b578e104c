"""The command line as a newcomer meets it: --help on every command, recipes whose values are the parser's defaults,
and every model field that persona-chat and persona-serve take reaching the loader (or refused in one line)."""

from __future__ import annotations

import json

import pytest

from persona.commands import chat, data, export, push, serve, train
from persona.commands import eval as evaluate
from persona.commands.cli import parse_recipe
from persona.configs import ModelArguments
from persona.errors import ModelLoadError

COMMANDS = {
    "persona-data": (data.main, ["dataset_path", "stats_json", "tokenizer_name_or_path"]),
    "persona-train": (train.main, ["learning_rate", "lm_coef", "forward_mode", "num_candidates", "model_config"]),
    "persona-eval": (evaluate.main, ["hits_k", "eval_num_candidates", "do_sample", "per_device_eval_batch_size"]),
    "persona-chat": (chat.main, ["persona", "json", "max_history", "temperature"]),
    "persona-push": (push.main, ["hub_model_id", "dry_run", "eval_results"]),
    "persona-serve": (serve.main, ["port", "api_key", "max_batch_size", "cors_origins"]),
    "persona-export": (export.main, ["gguf", "outtype"]),
}
USAGE = {
    "persona-push": "MODEL_DIR --hub_model_id USER/NAME [--field value ...]",
    "persona-export": "MODEL_DIR --gguf OUT.gguf [--outtype f32|f16|q8_0]",
}


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_help_with_its_fields(command, flag, capsys):
    main, fields = COMMANDS[command]
    assert main([flag]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: {command} {USAGE.get(command, '[RECIPE.yaml] [--field value ...]')}")
    for name in fields:
        assert f"--{name}" in shown, name
    assert "(default:" in shown


def test_help_after_a_recipe_shows_the_recipe_values_as_defaults(capsys, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: 0.0003\nnum_candidates: 7\n")
    assert train.main([str(recipe), "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "Peak learning rate (linear decay to 0). (default: 0.0003)" in shown and "(default: 7)" in shown


def test_recipe_values_are_checked_against_their_field_types_and_choices(tmp_path):
    from persona.errors import ConfigError

    recipe = tmp_path / "recipe.yaml"
    for text, message in [
        ("num_candidates: 2.5\n", "invalid int value: '2.5'"),
        ("forward_mode: sideways\n", "invalid choice: 'sideways'"),
        ("hits_k: [1, many]\n", "invalid int value: 'many'"),
        ("prior_pmi_weight: 0.75\n", "prior_pmi_weight: 0.75 needs likelihood_prior: true"),
        ("pmi_weight: -1\n", "pmi_weight: -1.0 is negative"),
    ]:
        recipe.write_text(text)
        with pytest.raises(ConfigError, match=message):
            parse_recipe([str(recipe)], (ModelArguments, *eval_classes()))


def eval_classes():
    from persona.configs import DataArguments, PersonaTrainingArguments
    from persona.training.evaluation import EvalArguments

    return DataArguments, PersonaTrainingArguments, EvalArguments


def test_a_mapping_in_the_recipe_and_json_on_the_command_line_give_the_same_model_config(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_config:\n  model_type: gpt2\n  n_layer: 2\n")
    (from_yaml, *_), as_run = parse_recipe([str(recipe)])
    (from_json, *_), _ = parse_recipe(["--model_config", json.dumps({"model_type": "gpt2", "n_layer": 2})])
    assert from_yaml.model_config == from_json.model_config == {"model_type": "gpt2", "n_layer": 2}
    assert as_run == {"model_config": {"model_type": "gpt2", "n_layer": 2}}


MODEL_FIELDS = [
    "--model_name_or_path", "some/model", "--tokenizer_name_or_path", "some/tokenizer",
    "--gguf_file", "model.Q8_0.gguf", "--revision", "v2", "--trust_remote_code", "true",
]  # fmt: skip


@pytest.mark.parametrize(
    ("command", "module"), [("chat", "persona.commands.chat"), ("serve", "persona.serving.server")]
)
def test_every_model_field_given_to_chat_and_serve_reaches_the_loader(command, module, monkeypatch):
    seen = []

    def recording(model_args, use_token_types=None):
        seen.append(model_args)
        raise ModelLoadError("stopped after loading", where="test")

    monkeypatch.setattr(f"{module}.load_for_inference", recording)
    assert COMMANDS[f"persona-{command}"][0](MODEL_FIELDS) == 2
    (given,) = seen
    named = ("some/model", "some/tokenizer", "model.Q8_0.gguf", "v2")
    assert (given.model_name_or_path, given.tokenizer_name_or_path, given.gguf_file, given.revision) == named
    assert given.trust_remote_code is True  # the flag given on the command line, not a default
    assert given.training_only_fields() == []


@pytest.mark.parametrize("command", ["persona-chat", "persona-serve", "persona-eval"])
@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--use_peft", "true"], "use_peft"),
        (["--model_config", '{"model_type": "gpt2"}'], "model_config"),
        (["--lora_r", "4"], "lora_r"),
    ],
)
def test_training_only_model_fields_are_refused_in_one_line(command, extra, named, capsys):
    assert COMMANDS[command][0](["--model_name_or_path", "some/model", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.count("\n") == 0
        and err.startswith(f"error: command line: {named} only applies when training")
        and "Fix: drop" in err
    )


def test_a_recipes_gguf_file_with_a_trained_folder_is_refused_with_its_fix(tmp_path):
    """The offline recipe names the GGUF inside its base model; pointed at a folder persona-train saved, it says so
    and how to load the folder's own weights, which ``--gguf_file ''`` does."""
    from persona.errors import ConfigError

    recipe = "recipes/smollm2-135m-offline/train.yaml"
    refused = rf"the folder {tmp_path} holds no SmolLM2-135M-Instruct.Q4_1.gguf.*--gguf_file ''"
    with pytest.raises(ConfigError, match=refused):
        parse_recipe([recipe, "--model_name_or_path", str(tmp_path)])
    (model, *_), _ = parse_recipe([recipe, "--model_name_or_path", str(tmp_path), "--gguf_file", ""])
    assert (model.model_name_or_path, model.gguf_file) == (str(tmp_path), "")
