"""Hardening: the bad-input matrix through the commands, interrupted runs, safe loading."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from persona.commands.train import main as train_main
from persona.errors import PersonaError
from tests.conftest import CONVERSATIONS, QUICKSTART, REPO, tiny_train_args, write_conversations

GOOD_SEED_DIALOG = {
    "personality": ["i like cats."],
    "utterances": [{"history": ["hi"], "candidates": ["no.", "hello!"]}],
}


def _write(path: Path, content) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


STRICT = [
    "--strict",
    "true",
]  # record-level problems are errors only in strict mode (skipped otherwise: tests/test_data.py)

# (case, file name, content, extra arguments, what the line must say)
MATRIX = [
    (
        "truncated JSON",
        "personachat.json",
        '{"train": [{"personality": ["a."], "utterances": [',
        [],
        r"invalid JSON at line 1, column \d+",
    ),
    (
        "not the declared format",
        "personachat.json",
        json.dumps({"train": [GOOD_SEED_DIALOG]}),
        ["--dataset_format", "parlai"],
        r"personachat\.json, line 1: not a ParlAI line",
    ),
    (
        "missing field",
        "personachat.json",
        json.dumps({"train": [{"personality": ["a."]}]}),
        STRICT,
        r"train\[0\]: missing field\(s\) \['utterances'\]",
    ),
    (
        "empty persona",
        "personachat.json",
        json.dumps({"train": [{**GOOD_SEED_DIALOG, "personality": []}]}),
        STRICT,
        r"train\[0\]: field 'personality' is empty",
    ),
    (
        "turn without its gold reply",
        "train_self_original.txt",
        "1 your persona: i like cats.\n2 hi there\n",
        STRICT,
        r"line 2: .*turn without its gold reply",
    ),
    (
        "non-UTF-8 bytes",
        "train.jsonl",
        b'{"personas": [["a."], ["b."]], "utterances": ["caf\xe9", "x"]}\n',
        [],
        r"not UTF-8 text \(byte \d+, line 1\)",
    ),
    (
        "10,000-token reply",
        "train.jsonl",
        "".join(
            json.dumps(c) + "\n"
            for c in [{"personas": [["a."], ["b."]], "utterances": ["hi", "word " * 10_000]}, *CONVERSATIONS]
        ),
        ["--validation_split_size", "1", *STRICT],
        r"line 1 \(user 2 as the bot\), turn 0: the gold reply \(20000 tokens\) cannot fit",
    ),
    ("empty file", "train.jsonl", "", [], r"train\.jsonl: the file is empty"),
    ("missing file", None, None, [], r"absent\.json: file not found"),
    (
        "unreachable model",
        "train.jsonl",
        None,
        ["--model_config", "null", "--model_name_or_path", "nobody/no-such-model", "--tokenizer_name_or_path", ""],
        r"nobody/no-such-model: cannot load 'nobody/no-such-model'",
    ),
    (
        "unknown recipe field",
        "recipe.yaml",
        "learning_rat: 0.001\n",
        [],
        r"recipe\.yaml: unknown field 'learning_rat'.*learning_rate",
    ),
    (
        "wrong type in the recipe",
        "recipe.yaml",
        "num_train_epochs: many\n",
        [],
        r"recipe\.yaml.*num_train_epochs.*many",
    ),
    (
        "JSONL record cut short",
        "train.jsonl",
        json.dumps(CONVERSATIONS[0]) + '\n{"personas": [["a."]',
        STRICT,
        r"train\.jsonl, line 2: invalid JSON",
    ),
    (
        "lone surrogate",
        "train.jsonl",
        '{"personas": [["a."], ["b."]], "utterances": ["hi \\ud800 there", "x"]}\n',
        STRICT,
        r"train\.jsonl, line 1 \(user 1 as the bot\): text that is not valid Unicode",
    ),
    (
        "record nested 1,000 deep",
        "train.jsonl",
        '{"personas": ' + "[" * 1000 + "]" * 1000 + ', "utterances": ["a", "b"]}\n',
        STRICT,
        r"train\.jsonl, line 1: JSON nested too deeply to read",
    ),
    (
        "Synthetic-Persona-Chat conversation that is not text",
        "train.jsonl",
        json.dumps({"user 1 personas": "a.", "user 2 personas": "b.", "Best Generated Conversation": 5}) + "\n",
        STRICT,
        r"line 1: 'Best Generated Conversation' must be text .*not int",
    ),
    (
        "CSV field over 128 KiB",
        "train.csv",
        "user 1 personas,user 2 personas,Best Generated Conversation\na.,b.,User 1: " + "x" * 140_000 + "\n",
        STRICT,
        r"train\.csv, row 2: a row the CSV reader cannot read \(field larger than field limit",
    ),
    (
        "nothing usable left",
        "train.jsonl",
        '{"personas": [["a."], ["b."]], "utterances": []}\n',
        [],
        r"train\.jsonl: no usable dialogs in the 'all' split",
    ),
]


@pytest.mark.parametrize("case, name, content, extra, expected", MATRIX, ids=[m[0] for m in MATRIX])
def test_bad_input_matrix(case, name, content, extra, expected, tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache"
    data = tmp_path / "absent.json"
    recipe = []
    if name == "recipe.yaml":
        recipe = [str(_write(tmp_path / name, content))]
        data = write_conversations(tmp_path / "train.jsonl", CONVERSATIONS)
    elif content is not None:
        data = _write(tmp_path / name, content)
    elif name is not None:
        data = write_conversations(tmp_path / name, CONVERSATIONS)
    argv = [*recipe, *tiny_train_args(out, "--dataset_path", str(data), "--max_steps", "1", *extra)]
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]  # beside progress bars, if any
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(expected, lines[0]) and "Fix: " in lines[0], lines[0]
    assert not out.exists()  # no output folder
    assert not cache.exists() or not [
        p for p in cache.iterdir() if p.name != "downloads"
    ]  # no cache, not even a partial one


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(PersonaError, match="file not found"):
        train_main([*tiny_train_args(tmp_path / "run", "--dataset_path", str(tmp_path / "absent.json")), "--debug"])


def _big_corpus(path: Path, conversations: int = 6000) -> Path:
    words = "cats dogs music jazz chess paris ohio nurse pilot truck pizza garden rain books".split()
    records = [
        {
            "personas": [[f"i like {words[i % 14]}."], [f"i am {i}."]],
            "utterances": [f"{words[(i + k) % 14]} {i} {k} " * 6 for k in range(8)],
        }
        for i in range(conversations)
    ]
    return write_conversations(path, records)


def _persona_data(corpus: Path, cache: Path, **popen) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "persona.commands.data",
        "--dataset_path",
        str(corpus),
        "--dataset_cache",
        str(cache),
        "--tokenizer_name_or_path",
        str(QUICKSTART / "tokenizer"),
        "--splits",
        "train",
        "--validation_split_size",
        "0",
    ]
    return subprocess.Popen(command, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, **popen)


def test_kill_during_preparation_leaves_nothing_reused(tmp_path):
    corpus, cache = _big_corpus(tmp_path / "train.jsonl"), tmp_path / "cache"
    process = _persona_data(corpus, cache, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(cache.glob(".tmp-*/**/*.arrow")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "preparation ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert [p.name.startswith(".tmp-") for p in cache.iterdir()] == [True]  # only the unfinished build
    again = _persona_data(corpus, cache, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr[-2000:]
    assert "Preparing" in stderr and "from the cache" not in stderr  # rebuilt, the partial build not reused
    (built,) = cache.iterdir()  # the stale partial build was removed
    assert json.loads(stdout)["cache_path"] == str(built) and (built / "stats.json").exists()


def test_two_processes_preparing_one_cache_end_with_one_valid_cache(tmp_path):
    corpus, cache = _big_corpus(tmp_path / "train.jsonl", 1500), tmp_path / "cache"
    processes = [
        _persona_data(corpus, cache, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [e[-2000:] for _, e in outputs]
    (built,) = cache.iterdir()
    stats = [json.loads(out) for out, _ in outputs]
    assert stats[0] == stats[1] and stats[0]["cache_path"] == str(built)


def test_kill_during_training_resumes_to_the_same_result(tmp_path):
    common = (
        "--max_train_dialogs",
        "40",
        "--max_eval_dialogs",
        "2",
        "--eval_num_candidates",
        "4",
        "--max_steps",
        "30",
        "--save_strategy",
        "steps",
        "--save_steps",
        "5",
        "--per_device_train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "1",
    )
    reference = tmp_path / "reference"
    assert train_main(tiny_train_args(reference, *common)) == 0
    interrupted = tmp_path / "interrupted"
    command = [sys.executable, "-m", "persona.commands.train", *tiny_train_args(interrupted, *common)]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while (
        not (interrupted / "checkpoint-10" / "trainer_state.json").exists()
        and time.time() < deadline
        and process.poll() is None
    ):
        time.sleep(0.02)
    assert process.poll() is None, "training ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "eval_results.json").exists()
    left = {p.name: sorted(f.name for f in p.iterdir()) for p in interrupted.glob("checkpoint-*")}
    assert train_main([*tiny_train_args(interrupted, *common), "--resume_from_checkpoint", "last"]) == 0
    want, got = (json.loads((run / "eval_results.json").read_text()) for run in (reference, interrupted))
    assert got["eval_loss"] == pytest.approx(want["eval_loss"], rel=1e-5), f"checkpoints left by the kill: {left}"
    assert json.loads((interrupted / "trainer_state.json").read_text())["global_step"] == 30


def test_a_checkpoint_written_in_part_is_not_resumed_from(tmp_path, caplog):
    from persona.training.checkpoints import last_complete_checkpoint

    for step, state in ((5, "{}"), (10, "{}"), (15, '{"global_step": 1'), (20, None)):  # 15 cut short, 20 without
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert (
        "checkpoint-15: written only in part" in caplog.text and "checkpoint-20: written only in part" in caplog.text
    )


def test_no_pickle_anywhere(trained_model_dir):
    sources = [p for folder in ("persona", "benchmarks", "scripts") for p in (REPO / folder).rglob("*.py")]
    for source in sources:
        text = source.read_text()
        assert "import pickle" not in text and "pickle.load" not in text, source
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (source, call)
    written = [p.name for p in trained_model_dir.rglob("*") if p.is_file()]
    assert "model.safetensors" in written and not [n for n in written if n.endswith((".bin", ".pkl", ".pickle"))]
