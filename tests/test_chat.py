"""persona-chat: the prompt loop through a pseudo-terminal, JSON lines, and a model without persona tokens."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time

from persona.commands.chat import main as chat_main
from tests.conftest import QUICKSTART, REPO


def _read_until(fd, marker: bytes, timeout: float = 60) -> bytes:
    data, deadline = b"", time.time() + timeout
    while marker not in data and time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                data += os.read(fd, 4096)
            except OSError:
                break
    return data


def test_interactive_loop_in_a_pseudo_terminal(trained_model_dir):
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "persona.commands.chat",
            "--model_name_or_path",
            str(trained_model_dir),
            "--persona",
            "i like cats.",
            "--persona",
            "i am tall.",
            "--no_sample",
        ],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    os.close(follower)  # input() writes its prompt to stderr when the readline module is not loaded
    try:
        assert b"Persona: i like cats. i am tall." in _read_until(leader, b">>> ")
        os.write(leader, b"hello, who are you?\n")
        exchange = _read_until(leader, b">>> ")  # the echo, the reply, the next prompt
        assert exchange.startswith(b"hello, who are you?") and len(exchange.split(b"\r\n")[1].strip()) > 0  # the reply
        os.write(leader, b"/reset\n")
        assert b"(history cleared)" in _read_until(leader, b"(history cleared)")
        os.write(leader, b"/persona i love jazz.\n")
        assert b"Persona: i love jazz." in _read_until(leader, b"Persona: i love jazz.")
        os.write(leader, b"/quit\n")
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        os.close(leader)


def test_history_is_kept_and_reset(trained_model_dir):
    from persona.commands.chat import chat_loop
    from persona.model.decoding import Bot
    from persona.model.generation import DecodingArguments
    from tests.conftest import load_folder

    seen = []

    class Recording(Bot):
        def reply(self, persona, history):
            seen.append(list(history))
            return "ok."

    inputs = iter(["a", "b", "/reset", "c"])

    def read(_prompt):
        try:
            return next(inputs)
        except StopIteration:
            raise EOFError from None  # Ctrl-D

    out = []
    chat_loop(
        Recording(load_folder(trained_model_dir), DecodingArguments(), 2),
        ["i like cats."],
        read=read,
        write=out.append,
    )
    assert seen == [["a"], ["a", "ok.", "b"], ["c"]]


def test_json_lines_answer_each_request(trained_model_dir, tmp_path):
    requests = [
        {"persona": ["i like cats."], "history": ["hi!"]},
        {"persona": ["i love jazz."], "history": ["what music?", "jazz.", "nice."]},
    ]
    lone_surrogate = '{"persona": ["i like cats."], "history": ["\\ud800 hi"]}\n'  # valid JSON, not valid Unicode
    stdin = (
        "".join(json.dumps(r) + "\n" for r in requests)
        + "not json\n"
        + lone_surrogate
        + json.dumps(requests[0])
        + "\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "persona.commands.chat",
            "--model_name_or_path",
            str(trained_model_dir),
            "--json",
            "--no_sample",
        ],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 0 and len(lines) == 5, result.stderr[-2000:]
    assert all(isinstance(line["reply"], str) for line in (*lines[:2], lines[4])) and "line 3" in lines[2]["error"]
    assert lines[3]["error"].startswith("line 4: text 1 is not valid Unicode (surrogates not allowed")
    assert re.search(r"persona-chat: \d+ reply tokens in [\d.]+ s, [\d.]+ tokens/s", result.stderr)


def test_a_message_that_is_not_valid_unicode_is_not_sent_and_the_chat_goes_on(trained_model_dir):
    from persona.commands.chat import chat_loop
    from persona.model.decoding import Bot
    from persona.model.generation import DecodingArguments
    from tests.conftest import load_folder

    inputs, out = iter(["\udcff broken bytes", "hello!", "/quit"]), []
    bot = Bot(load_folder(trained_model_dir), DecodingArguments(do_sample=False, max_length=4), 2)
    chat_loop(bot, ["i like cats."], lambda _: next(inputs), out.append)
    assert (
        out[2].startswith("(not sent: text ") and "not valid Unicode" in out[2] and not out[3].startswith("(not sent")
    )
    assert 1 <= bot.speed.tokens <= 4 and out[4:] == [f"({bot.speed})"]  # the one reply's tokens, said at the end
    assert re.fullmatch(r"\(\d reply tokens in \d+\.\d s, \d+\.\d tokens/s\)", out[4])


def test_model_without_persona_tokens_is_a_clear_message(tmp_path, capsys):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=700)).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(QUICKSTART / "tokenizer").save_pretrained(tmp_path)
    assert chat_main(["--model_name_or_path", str(tmp_path), "--persona", "i like cats."]) == 2
    assert "no persona special tokens" in capsys.readouterr().err
