"""Preemption: SIGTERM (what a preempted cloud or cluster machine gets before the kill) ends persona-train after the
current optimizer step with a checkpoint of it, from which the run resumes to exactly the uninterrupted weights;
persona-data stopped by SIGTERM leaves no partial cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from safetensors.torch import load_file

from persona.commands.train import main as train_main
from tests.conftest import REPO, tiny_train_args

COMMON = (
    "--max_train_dialogs", "40", "--max_eval_dialogs", "2", "--eval_num_candidates", "4", "--max_steps", "150",
    "--save_strategy", "no", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
    "--logging_steps", "1",
)  # fmt: skip


class Output(threading.Thread):
    """The lines a process writes to one stream, read as they come."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream, self.lines = stream, []

    def run(self):
        for line in self.stream:
            self.lines.append(line)

    def wait_for(self, text: str, process: subprocess.Popen, seconds: float = 240) -> bool:
        deadline = time.time() + seconds
        while time.time() < deadline and process.poll() is None:
            if any(text in line for line in self.lines):
                return True
            time.sleep(0.01)
        return False


def _started(command: list[str]) -> tuple[subprocess.Popen, Output, Output]:
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = Output(process.stdout), Output(process.stderr)
    out.start()
    err.start()
    return process, out, err


def _weights(folder) -> dict:
    return load_file(str(folder / "model.safetensors"))


def test_sigterm_saves_the_step_reached_and_the_resumed_run_ends_with_the_uninterrupted_weights(tmp_path):
    reference = tmp_path / "reference"
    assert train_main(tiny_train_args(reference, *COMMON)) == 0
    interrupted = tmp_path / "interrupted"
    process, out, err = _started(
        [sys.executable, "-m", "persona.commands.train", *tiny_train_args(interrupted, *COMMON)]
    )
    assert out.wait_for("'loss'", process), "training ended (or never logged) before it could be stopped"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    err.join(timeout=10)
    (stopped,) = [line for line in err.lines if line.startswith("stopped: ")]
    checkpoints = list(interrupted.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "trainer_state.json").exists(), err.lines[-20:]
    step = int(checkpoints[0].name.split("-")[1])
    assert (
        0 < step < 150
        and f"interrupted at step {step} of 150" in stopped
        and "--resume_from_checkpoint last" in stopped
    )
    assert not (interrupted / "model.safetensors").exists() and not (interrupted / "eval_results.json").exists()
    assert train_main([*tiny_train_args(interrupted, *COMMON), "--resume_from_checkpoint", "last"]) == 0
    expected, resumed = _weights(reference), _weights(interrupted)
    assert expected.keys() == resumed.keys()
    assert max((expected[k] - resumed[k]).abs().max().item() for k in expected) == 0.0


def test_a_second_signal_ends_training_at_once(tmp_path):
    command = [sys.executable, "-m", "persona.commands.train", *tiny_train_args(tmp_path / "run", *COMMON)]
    process, out, err = _started(command)
    assert out.wait_for("'loss'", process)
    process.send_signal(signal.SIGTERM)
    assert err.wait_for("SIGTERM received", process)  # the first one is being handled
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == -signal.SIGTERM  # killed by the second one, no checkpoint waited for


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_persona_data_stopped_by_a_signal_leaves_no_partial_cache(tmp_path, signum):
    from tests.test_hardening import _big_corpus, _persona_data

    corpus, cache = _big_corpus(tmp_path / "train.jsonl"), tmp_path / "cache"
    process = _persona_data(corpus, cache, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(cache.glob(".tmp-*/**/*.arrow")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "preparation ended before it could be stopped"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum and stderr.splitlines()[-1] == f"stopped: interrupted by {signum.name}"
    assert "Traceback" not in stderr, stderr[-2000:]
    assert not cache.exists() or list(cache.iterdir()) == []  # not even the unfinished build's folder


def test_two_ranks_stopped_by_sigterm_save_the_same_step_and_resume_to_the_uninterrupted_weights(tmp_path):
    """accelerate launch forwards SIGTERM to both ranks; they agree on the step, save one checkpoint and stop."""
    from persona.serving.server import free_port

    def launch() -> list[str]:  # a fresh rendezvous port each time: a killed launcher's may linger
        config = str(REPO / "accelerate_configs" / "multi_cpu.yaml")
        return [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            config,
            "--main_process_port",
            str(free_port()),
        ] + ["-m", "persona.commands.train"]

    reference = tmp_path / "reference"
    done = subprocess.run(
        [*launch(), *tiny_train_args(reference, *COMMON)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    interrupted = tmp_path / "interrupted"
    process, out, err = _started([*launch(), *tiny_train_args(interrupted, *COMMON)])
    assert out.wait_for("'loss'", process), "training ended (or never logged) before it could be stopped"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) != 0
    err.join(timeout=10)
    checkpoints = list(interrupted.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "trainer_state.json").exists(), "".join(err.lines[-30:])
    # each rank stops after the agreed step (the launcher may end the slower one once the first has exited)
    assert any(
        line.startswith(f"stopped: interrupted at step {checkpoints[0].name.split('-')[1]} ") for line in err.lines
    )
    resumed = subprocess.run(
        [*launch(), *tiny_train_args(interrupted, *COMMON), "--resume_from_checkpoint", "last"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = _weights(reference), _weights(interrupted)
    assert max((expected[k] - got[k]).abs().max().item() for k in expected) == 0.0


def test_persona_serve_on_sigterm_finishes_what_it_holds_tells_new_clients_to_retry_and_exits_0(trained_model_dir):
    import httpx

    from persona.serving.server import free_port

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "persona.commands.serve",
        "--model_name_or_path",
        str(trained_model_dir),
        "--port",
        str(port),
    ]
    process, _, err = _started([*command, "--shutdown_grace_s", "60"])
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    body = {"messages": [{"role": "user", "content": "hello!"}], "max_tokens": 32, "stream": True}
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{url}/v1/chat/completions", json=body) as held:
        lines = held.iter_lines()
        assert next(lines).startswith("data: ")  # the request is in flight, its reply streaming
        process.send_signal(signal.SIGTERM)
        assert err.wait_for("Stopping: no new requests", process)
        refused = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": False}, timeout=30)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert refused.json()["error"]["code"] == "shutting_down"
        rest = list(lines)
    assert [line for line in rest if line][-1] == "data: [DONE]"  # the held request was finished
    assert process.wait(timeout=60) == 0
