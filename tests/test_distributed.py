"""Distributed launches on CPU ranks, and a finished run that fails after training still leaves its model."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from persona.commands.train import main as train_main
from persona.serving.server import free_port
from persona.training.trainer import PersonaTrainer
from tests.conftest import REPO, load_folder, tiny_train_args


@pytest.mark.parametrize("version", [1, 2])
def test_an_fsdp_config_on_cpu_ranks_is_a_clear_error(version, tmp_path):
    """accelerate (1.15) shards with FSDP on accelerators only: on CPU ranks FSDP 1 failed inside the Trainer with a
    traceback and FSDP 2 silently trained data-parallel; persona-train says what to launch instead, before any work."""
    config = yaml.safe_load((REPO / "accelerate_configs" / "fsdp.yaml").read_text())
    config.update(num_processes=2, mixed_precision="no", main_process_ip="127.0.0.1", main_process_port=free_port())
    config["fsdp_config"]["fsdp_version"] = version
    (tmp_path / "fsdp_on_cpu.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(tmp_path / "fsdp_on_cpu.yaml"),
        "-m",
        "persona.commands.train",
        *tiny_train_args(
            out,
            "--max_train_dialogs",
            "8",
            "--max_eval_dialogs",
            "2",
            "--eval_num_candidates",
            "4",
            "--max_steps",
            "2",
        ),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert (
        "error: accelerate launch --config_file: the accelerate config asks for FSDP, which accelerate runs on GPUs"
        in result.stderr
    )
    assert "accelerate_configs/multi_cpu.yaml" in result.stderr and not out.exists()


def test_a_failure_in_the_end_of_training_evaluation_leaves_a_model_that_loads(tmp_path, monkeypatch):
    def failing(self, *args, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(PersonaTrainer, "evaluate", failing)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="evaluation failed"):
        train_main(tiny_train_args(out, "--max_train_dialogs", "4", "--max_eval_dialogs", "1", "--max_steps", "1"))
    loaded = load_folder(out)
    assert (out / "model.safetensors").exists() and loaded.tokenizer.chat_template and loaded.facts.token_types is True


def test_evaluation_on_two_ranks_equals_one_process_on_exactly_the_same_turns(trained_model_dir, tmp_path):
    """persona-eval under accelerate launch: the turns sharded over 2 CPU ranks (an odd number of them, so the
    shards differ in size) and gathered give the one-process metrics, no turn lost or counted twice."""
    import json

    from persona.commands.eval import main as eval_main
    from tests.conftest import write_conversations

    conversations = [  # both sides: 3 + 2 turns each, 15 in all
        {
            "personas": [[f"i like color {i}."], [f"i live in town {i}."]],
            "utterances": [f"hi {i}!", f"hello {i}.", f"how are you {i}?", f"fine {i}.", f"bye {i}."],
        }
        for i in range(3)
    ]
    corpus = write_conversations(tmp_path / "valid.jsonl", conversations)
    common = [
        "--model_name_or_path",
        str(trained_model_dir),
        "--dataset_path",
        str(corpus),
        "--dataset_cache",
        str(tmp_path / "cache"),
        "--eval_num_candidates",
        "7",
        "--do_sample",
        "false",
        "--max_length",
        "5",
        "--per_device_eval_batch_size",
        "4",
    ]
    assert eval_main([*common, "--output_dir", str(tmp_path / "one")]) == 0
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "accelerate_configs" / "multi_cpu.yaml"),
        "--main_process_port",
        str(free_port()),
        "-m",
        "persona.commands.eval",
        *common,
        "--output_dir",
        str(tmp_path / "two"),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (json.loads((tmp_path / run / "eval_results.json").read_text()) for run in ("one", "two"))
    assert one["num_turns"] == two["num_turns"] == {"perplexity": 15, "hits": 15, "f1": 15}
    for key in ("perplexity", "hits@1", "hits@5", "lm_hits@1", "f1", "num_reply_tokens"):
        assert two[key] == pytest.approx(one[key], rel=1e-6), key
    generated = [
        sorted(
            (tuple(r["history"]), r["gold"])
            for r in map(json.loads, (tmp_path / run / "generations.jsonl").read_text().splitlines())
        )
        for run in ("one", "two")
    ]
    assert generated[0] == generated[1]
