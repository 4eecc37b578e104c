"""persona-train end to end on tiny models: outputs, resume, bf16, two processes under accelerate."""

from __future__ import annotations

import ctypes.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from persona.commands.train import main as train_main
from persona.serving.server import free_port
from persona.training.allocator import hint_lean_allocator, preloaded_allocator
from persona.training.cpu_precision import hint_cpu_precision
from tests.conftest import QUICKSTART, REPO, TINY_GPT2, TINY_OPENAI_GPT, as_loaded, tiny_train_args


def _args(output_dir, *extra):
    return tiny_train_args(
        output_dir,
        "--max_train_dialogs",
        "24",
        "--max_eval_dialogs",
        "4",
        "--eval_num_candidates",
        "5",
        "--num_candidates",
        "2",
        "--train_batch_size",
        "4",
        "--valid_batch_size",
        "4",
        "--gradient_accumulation_steps",
        "2",
        "--logging_steps",
        "2",
        "--seed",
        "3",
        "--lr",
        "1e-3",
        *extra,
    )


def test_train_writes_every_output(tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="persona"):
        assert train_main(_args(out, "--n_epochs", "1", "--lm_coef", "2.0")) == 0
    # A CPU run under glibc's allocator says once how to hold its memory down.
    assert caplog.text.count("preload tcmalloc") == (preloaded_allocator() is None)
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "persona_recipe.yaml",
        "train_results.json",
        "eval_results.json",
        "trainer_state.json",
        "loss_curves.png",
        "training_args.json",
    ):
        assert (out / name).exists(), name
    assert not (out / "training_args.bin").exists()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["GPT2DoubleHeadsModel"]
    train = json.loads((out / "train_results.json").read_text())
    assert train["world_size"] == 1 and train["mixed_precision"] == "no"
    metrics = json.loads((out / "eval_results.json").read_text())
    for key in ("eval_loss", "eval_lm_loss", "eval_mc_loss", "eval_perplexity", "eval_hits@1", "eval_num_candidates"):
        assert key in metrics
    assert metrics["eval_num_candidates"] == 5
    assert metrics["eval_loss"] == pytest.approx(2.0 * metrics["eval_lm_loss"] + metrics["eval_mc_loss"])
    recipe = yaml.safe_load((out / "persona_recipe.yaml").read_text())
    assert recipe["learning_rate"] == 1e-3 and recipe["lm_coef"] == 2.0 and recipe["num_train_epochs"] == 1
    logs = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("lm_loss" in entry and "mc_loss" in entry for entry in logs)


def test_resumed_run_ends_like_an_uninterrupted_one(tmp_path):
    full = tmp_path / "full"
    assert train_main(_args(full, "--max_steps", "6", "--save_steps", "3", "--save_strategy", "steps")) == 0
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")
    assert (
        train_main(
            _args(
                resumed,
                "--max_steps",
                "6",
                "--save_steps",
                "3",
                "--save_strategy",
                "steps",
                "--resume_from_checkpoint",
                "last",
            )
        )
        == 0
    )
    a, b = (json.loads((d / "trainer_state.json").read_text()) for d in (full, resumed))
    assert a["global_step"] == b["global_step"] == 6
    ea, eb = (json.loads((d / "eval_results.json").read_text()) for d in (full, resumed))
    assert eb["eval_loss"] == pytest.approx(ea["eval_loss"], rel=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_bf16_mixed_precision_on_cpu(precision, tmp_path, monkeypatch):
    """The forward runs in the precision asked for (the LM head's output dtype, seen from inside the training step),
    on a machine without an accelerator with bf16 alone (no use_cpu)."""
    import torch

    from persona.training.trainer import PersonaTrainer

    seen = set()
    original = PersonaTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        hook = self.accelerator.unwrap_model(model).lm_head.register_forward_hook(
            lambda module, given, output: seen.add(output.dtype)
        )
        try:
            return original(self, model, inputs, *args, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(PersonaTrainer, "compute_loss", recording)
    out = tmp_path / precision
    assert train_main(_args(out, "--max_steps", "2", "--bf16", str(precision == "bf16").lower())) == 0
    assert json.loads((out / "train_results.json").read_text())["mixed_precision"] == (
        "bf16" if precision == "bf16" else "no"
    )
    assert seen == {torch.bfloat16 if precision == "bf16" else torch.float32}


def test_openai_gpt_trains_in_both_forward_modes_to_the_same_evaluation(tmp_path):
    """The reference's default family: its fast mode (full sequences, LM logits only where labels are) and the
    classic mode train to the same model."""
    results = {}
    for mode in ("packed", "classic"):
        out = tmp_path / mode
        assert (
            train_main(
                _args(out, "--model_config", json.dumps(TINY_OPENAI_GPT), "--max_steps", "2", "--forward_mode", mode)
            )
            == 0
        )
        results[mode] = json.loads((out / "eval_results.json").read_text())
    assert results["packed"]["eval_loss"] == pytest.approx(results["classic"]["eval_loss"], rel=1e-4)


def test_a_process_that_does_not_save_writes_nothing(tmp_path, monkeypatch, tiny_model, tokenizer):
    """Every process calls Trainer._save; another rank writing training_args.json raced rank 0's folder creation."""
    from persona.configs import PersonaTrainingArguments
    from persona.training.trainer import PersonaTrainer

    args = PersonaTrainingArguments(output_dir=str(tmp_path / "run"), report_to="none")
    trainer = PersonaTrainer(as_loaded(tiny_model, tokenizer), args)
    monkeypatch.setattr(PersonaTrainingArguments, "should_save", property(lambda self: False))
    trainer._save(str(tmp_path / "checkpoint-1"))
    assert not (tmp_path / "checkpoint-1").exists()


def test_two_processes_under_accelerate_launch_follow_one_time_budget(tmp_path):
    """Two ranks with a budget of 8 s and a cap of 1,000 updates: both stop after the same update (a rank that went
    on would hang the other) and the schedule, read from the slowest rank's clock, has annealed by then."""
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "accelerate_configs" / "multi_cpu.yaml"),
        "--main_process_port",
        str(free_port()),
        "-m",
        "persona.commands.train",
        *_args(out, "--max_steps", "1000", "--max_train_seconds", "8"),
    ]
    # A rank that aborts says where: faulthandler prints every thread's Python stack on SIGABRT.
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    train = json.loads((out / "train_results.json").read_text())
    assert train["world_size"] == 2
    assert 1 <= json.loads((out / "trainer_state.json").read_text())["global_step"] < 1000
    assert train["last_learning_rate"] < 0.5e-3  # of 1e-3: a 1,000-update schedule would still be near its peak


def test_bad_recipe_exits_2_with_one_line(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("learning_rat: 0.1\n")
    assert train_main([str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown field 'learning_rat'" in err and "did you mean 'learning_rate'" in err
    recipe.write_text("num_candidates: many\n")
    assert train_main([str(recipe)]) == 2
    assert "invalid int value: 'many'" in capsys.readouterr().err


def test_unreachable_model_offline_is_a_clear_error(tmp_path, capsys):
    assert train_main(["--model_name_or_path", "no-such-user/no-such-model", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot load 'no-such-user/no-such-model'" in err
    assert "(hf download no-such-user/no-such-model --local-dir DIR)" in err and "HF_HUB_OFFLINE=1" in err
    assert not any(tmp_path.iterdir())


def test_every_accelerate_config_parses():
    from accelerate.commands.config.config_args import load_config_from_file

    configs = sorted((REPO / "accelerate_configs").glob("*.yaml"))
    assert len(configs) == 10
    for path in configs:
        assert path.read_text().startswith("# "), f"{path.name} lacks its comment"
        config = load_config_from_file(str(path))
        assert config.num_processes >= 1, path.name


GLIBC_MAPS = "7f3a2c000000-7f3a2c028000 r--p 00000000 fe:01 1234 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
TCMALLOC_MAPS = GLIBC_MAPS + "7f3a2d000000-7f3a2d010000 r-xp 00000000 fe:01 5678 /usr/lib/libtcmalloc_minimal.so.4\n"


def test_a_cpu_run_hears_whether_its_precision_suits_the_cpu(caplog):
    """bf16 on a CPU without native bfloat16 is warned against; float32 on one with it hears of --bf16 true; bf16 on
    a native CPU, float32 on a plain one and any run on an accelerator hear nothing."""
    with caplog.at_level("INFO", logger="persona"):
        hint_cpu_precision(on_cpu=True, bf16=True, native_bf16=False)
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert "without native bfloat16 (AVX512-BF16 or AMX)" in caplog.text and "leave bf16 off" in caplog.text
        caplog.clear()
        hint_cpu_precision(on_cpu=True, bf16=False, native_bf16=True)
        assert [r.levelname for r in caplog.records] == ["INFO"]
        assert "bf16: true (or --bf16 true) makes more updates" in caplog.text
        caplog.clear()
        hint_cpu_precision(on_cpu=True, bf16=True, native_bf16=True)
        hint_cpu_precision(on_cpu=True, bf16=False, native_bf16=False)
        hint_cpu_precision(on_cpu=False, bf16=True, native_bf16=False)
        hint_cpu_precision(on_cpu=False, bf16=False, native_bf16=True)
    assert caplog.text == ""


def test_a_cpu_run_on_glibc_malloc_says_how_to_preload_tcmalloc(tmp_path, caplog):
    """The hint is given on the CPU under glibc's allocator, with the preload that fixes it; not on an accelerator,
    not when tcmalloc (or jemalloc) is already mapped, not where the process's maps cannot be read."""
    maps = tmp_path / "maps"
    maps.write_text(GLIBC_MAPS)
    with caplog.at_level("INFO", logger="persona"):
        hint_lean_allocator(on_cpu=True, maps=maps)
        assert "preload tcmalloc: LD_PRELOAD=libtcmalloc_minimal.so.4 (Debian and Ubuntu: apt-get" in caplog.text
        caplog.clear()
        hint_lean_allocator(on_cpu=False, maps=maps)
        for lean in (TCMALLOC_MAPS, GLIBC_MAPS + "7f00-7f01 r-xp 0 0:0 0 /usr/lib/libjemalloc.so.2\n"):
            maps.write_text(lean)
            hint_lean_allocator(on_cpu=True, maps=maps)
        hint_lean_allocator(on_cpu=True, maps=tmp_path / "absent")
    assert caplog.text == ""
    assert preloaded_allocator(maps) == "jemalloc" and preloaded_allocator(tmp_path / "absent") is None


@pytest.mark.skipif(not ctypes.util.find_library("tcmalloc_minimal"), reason="apt-get install libtcmalloc-minimal4")
def test_the_preload_the_hint_gives_is_the_one_a_process_then_runs_on():
    probe = "from persona.training.allocator import preloaded_allocator; print(preloaded_allocator())"
    seen = {}
    for preload in ("", "libtcmalloc_minimal.so.4"):
        env = {**os.environ, "LD_PRELOAD": preload}
        seen[preload] = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
    assert seen == {"": "None", "libtcmalloc_minimal.so.4": "tcmalloc"}


def test_persona_data_prepares_the_cache_persona_train_then_loads_in_either_layout(tmp_path, template_trained, caplog):
    """persona-data with a run's model and data fields writes the very cache that persona-train reads: in the
    reference layout (special tokens added) and in a chat template's (its tokenizer as it is)."""
    from persona.commands.data import main as data_main

    cache = tmp_path / "cache"
    data_fields = ["--model_config", json.dumps(TINY_GPT2), "--tokenizer_name_or_path", str(QUICKSTART / "tokenizer")]
    data_fields += ["--dataset_path", str(QUICKSTART), "--dataset_cache", str(cache), "--max_train_dialogs", "8"]
    assert data_main([*data_fields, "--max_eval_dialogs", "2"]) == 0
    prepared = list(cache.iterdir())
    with caplog.at_level("INFO", logger="persona"):
        assert (
            train_main(
                tiny_train_args(
                    tmp_path / "run",
                    "--max_train_dialogs",
                    "8",
                    "--max_eval_dialogs",
                    "2",
                    "--max_steps",
                    "1",
                    "--dataset_cache",
                    str(cache),
                )
            )
            == 0
        )
    assert list(cache.iterdir()) == prepared and "Loading prepared features from the cache" in caplog.text

    template_cache = template_trained.parent / "cache"  # what persona-train prepared for the chat-template model
    trained_with = list(template_cache.iterdir())
    recipe = yaml.safe_load((template_trained / "persona_recipe.yaml").read_text())
    fields = ("model_name_or_path", "dataset_path", "validation_split_size", "input_layout", "eval_num_candidates")
    assert data_main([f"--{name}={recipe[name]}" for name in fields] + ["--dataset_cache", str(template_cache)]) == 0
    assert list(template_cache.iterdir()) == trained_with


def test_a_time_budget_stops_training_after_the_update_that_spends_it_then_saves_and_evaluates(tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="persona"):
        assert train_main(_args(out, "--max_steps", "50", "--max_train_seconds", "1e-9")) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 1 and state["max_steps"] == 50
    assert (out / "model.safetensors").exists() and "eval_hits@1" in json.loads(
        (out / "eval_results.json").read_text()
    )
    assert "Training stopped at step 1 of at most 50" in caplog.text
    budget = tmp_path / "budget"
    assert train_main(_args(budget, "--max_steps", "3", "--max_train_seconds", "3600")) == 0
    assert json.loads((budget / "trainer_state.json").read_text())["global_step"] == 3
