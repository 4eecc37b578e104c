"""persona-serve cannot be taken down by a request: degenerate but legal numbers, faults injected into the decoding,
a decoding worker that ends, SIGTERM while the worker is stuck, the tokenizer used from two threads, the page's
limits and the Host allowlist."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import gradio as gr
import httpx
import pytest

from persona.model.generation import DecodingArguments
from persona.serving.server import free_port
from tests.test_serve import ASK, PERSONA, live_server

NORMAL = {"messages": ASK, "max_tokens": 4}

# (case, extra request fields, expected status, the field a 400 names)
DEGENERATE = [
    ("temperature 1e-300 (greedy)", {"temperature": 1e-300}, 200, None),
    ("the smallest float temperature", {"temperature": 5e-324}, 200, None),
    ("temperature just under the greedy bound", {"temperature": 9.9e-6}, 200, None),
    ("temperature just over the greedy bound", {"temperature": 1.1e-5}, 200, None),
    ("temperature 2", {"temperature": 2}, 200, None),
    ("top_p 0", {"temperature": 1, "top_p": 0}, 200, None),
    ("top_p 1e-300", {"temperature": 1, "top_p": 1e-300}, 200, None),
    ("repetition_penalty 1e-300", {"repetition_penalty": 1e-300}, 400, "repetition_penalty"),
    ("repetition_penalty 0.001", {"repetition_penalty": 0.001}, 400, "repetition_penalty"),
    ("repetition_penalty 0.01", {"repetition_penalty": 0.01, "temperature": 1}, 200, None),
    ("repetition_penalty 10", {"repetition_penalty": 10, "temperature": 1}, 200, None),
    ("repetition_penalty 11", {"repetition_penalty": 11}, 400, "repetition_penalty"),
    ("penalties at their extremes", {"presence_penalty": -2, "frequency_penalty": -2, "max_tokens": 32}, 200, None),
    (
        "penalties at their other extremes",
        {"presence_penalty": 2, "frequency_penalty": 2, "max_tokens": 32},
        200,
        None,
    ),
    (
        "every number at its extreme at once",
        {"temperature": 1e-300, "top_p": 1e-300, "repetition_penalty": 10, "presence_penalty": 2, "n": 8, "seed": 1},
        200,
        None,
    ),
    ("the lowest seed", {"temperature": 1, "seed": -(2**63)}, 200, None),
    ("the highest seed", {"temperature": 1, "seed": 2**64 - 1}, 200, None),
    (
        "temperature 1e-300 with 20 top logprobs",
        {"temperature": 1e-300, "logprobs": True, "top_logprobs": 20},
        200,
        None,
    ),
]


@pytest.fixture(scope="module")
def served(trained_model_dir):
    with live_server(trained_model_dir, max_tokens_cap=32, max_body_bytes=4096) as (url, batcher):
        yield url, batcher


@pytest.mark.parametrize("case, fields, status, param", DEGENERATE, ids=[d[0] for d in DEGENERATE])
def test_a_degenerate_legal_value_is_answered_and_the_next_request_too(case, fields, status, param, served):
    url, _ = served
    for stream in (False, True):
        response = httpx.post(f"{url}/v1/chat/completions", json={**NORMAL, **fields, "stream": stream}, timeout=30)
        assert response.status_code == status, (case, response.text)
        if status == 400:
            assert response.json()["error"]["param"] == param
        elif stream:
            assert response.text.rstrip().endswith("data: [DONE]") and '"error"' not in response.text
        else:
            assert all(c["finish_reason"] in ("stop", "length") for c in response.json()["choices"])
    start = time.monotonic()
    assert httpx.post(f"{url}/v1/chat/completions", json=NORMAL, timeout=10).status_code == 200
    assert time.monotonic() - start < 10
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200


def test_a_temperature_below_the_greedy_bound_is_the_greedy_reply(served):
    url, _ = served

    def reply(temperature: float) -> str:
        body = {**NORMAL, "max_tokens": 12, "temperature": temperature}
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).json()["choices"][0]["message"]

    assert reply(1e-300) == reply(9e-6) == reply(0)


def test_the_command_line_refuses_what_the_api_refuses():
    from persona.errors import ConfigError

    for field, value in (("temperature", -1.0), ("temperature", float("nan")), ("top_p", 1.5)):
        with pytest.raises(ConfigError, match=field):
            DecodingArguments(**{field: value})
    expected = "repetition_penalty is 1e-300 Fix: give repetition_penalty a number from 0.01 to 10.0"
    with pytest.raises(ConfigError, match=expected):
        DecodingArguments(repetition_penalty=1e-300)
    assert DecodingArguments(temperature=1e-300).do_sample is False and DecodingArguments().do_sample is True


def test_a_processor_that_raises_fails_its_row_only(served, monkeypatch, caplog, join_sizes):
    """A logits processor that raises for one request (its presence penalty marks it) while seven others decode beside
    it: that request gets a 500 naming its request id, whose traceback the log holds; the others their replies.
    Streamed, a failure before the first chunk is the answer's own 500, one after it an error event ending the
    stream."""
    from persona.model.generation import ReplyPenalties

    url, batcher = served
    original = ReplyPenalties.__call__

    def failing(self, input_ids, scores):
        self.calls = getattr(self, "calls", 0) + 1
        if self.presence == 1.25 or (self.presence == 1.5 and self.calls > 3):  # at once, or at the fourth token
            raise RuntimeError("injected fault")
        return original(self, input_ids, scores)

    monkeypatch.setattr(ReplyPenalties, "__call__", failing)
    faulty = {**NORMAL, "max_tokens": 16, "presence_penalty": 1.25}
    normal = {**NORMAL, "max_tokens": 16, "temperature": 1}
    with caplog.at_level(logging.ERROR, logger="persona.serving.batching"), ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda body: httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30),
                [normal] * 3 + [faulty] + [normal] * 4,
            )
        )
    assert [a.status_code for a in answers] == [200] * 3 + [500] + [200] * 4
    assert max(join_sizes) > 1  # the faulty row shared a batch
    error = answers[3].json()["error"]
    assert error["type"] == "server_error" and error["code"] == "generation_failed" and "Traceback" not in error
    request_id = error["message"].split("under ")[-1]
    assert request_id.startswith("chatcmpl-")
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and logged[0].exc_info and "injected fault" in str(logged[0].exc_info[1])
    streamed = httpx.post(f"{url}/v1/chat/completions", json={**faulty, "stream": True}, timeout=30)
    assert streamed.status_code == 500 and streamed.json()["error"]["code"] == "generation_failed"  # nothing sent yet
    later = httpx.post(
        f"{url}/v1/chat/completions", json={**faulty, "presence_penalty": 1.5, "stream": True}, timeout=30
    )
    assert later.status_code == 200 and '"role":"assistant"' in later.text.replace(" ", "")  # the stream had begun
    assert '"code": "generation_failed"' in later.text and later.text.rstrip().endswith("[DONE]")
    assert httpx.post(f"{url}/v1/chat/completions", json=NORMAL, timeout=10).status_code == 200


def test_a_failed_step_and_a_failed_loop_fail_their_rows_and_the_loop_goes_on(served, monkeypatch):
    """A decoding step that raises fails the rows of that step (500); so does an error outside any row's handling
    (the batcher's step itself raising); each time the next request is answered."""
    from persona.model.running_batch import RunningBatch
    from persona.serving.batching import ReplyBatcher

    url, _ = served
    step, batcher_step = RunningBatch.step, ReplyBatcher._step
    faults = {"step": 1, "_step": 1}

    def failing_step(self, tokens):
        if faults["step"]:
            faults["step"] -= 1
            raise RuntimeError("injected into RunningBatch.step")
        return step(self, tokens)

    def failing_batcher_step(self, batch, rows):
        if faults["_step"] and any(row.stream.finish_reason is None for row in rows):  # not a row that has ended
            faults["_step"] -= 1
            raise RuntimeError("injected into ReplyBatcher._step")
        return batcher_step(self, batch, rows)

    for cls, name, failing in ((RunningBatch, "step", failing_step), (ReplyBatcher, "_step", failing_batcher_step)):
        monkeypatch.setattr(cls, name, failing)
        failed = httpx.post(f"{url}/v1/chat/completions", json={**NORMAL, "max_tokens": 8}, timeout=30)
        assert failed.status_code == 500 and failed.json()["error"]["code"] == "generation_failed", failed.text
        assert httpx.post(f"{url}/v1/chat/completions", json=NORMAL, timeout=10).status_code == 200, name
        assert faults[name] == 0


def test_a_worker_that_ended_turns_health_to_503_and_answers_what_it_held(trained_model_dir, monkeypatch):
    from persona.serving.batching import ReplyBatcher

    join = ReplyBatcher._join

    def dying(self, batch, arrived):
        if any("stop the worker" in request.history[-1] for request in arrived):
            raise SystemExit("injected: the worker ends")
        return join(self, batch, arrived)

    monkeypatch.setattr(ReplyBatcher, "_join", dying)
    with live_server(trained_model_dir) as (url, batcher):
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        body = {"messages": [{"role": "user", "content": "stop the worker"}], "max_tokens": 4}
        held = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)
        assert held.status_code == 503 and held.json()["error"]["code"] == "worker_stopped"
        batcher.worker.join(timeout=10)
        health = httpx.get(f"{url}/health", timeout=10)
        assert health.status_code == 503 and health.json()["error"]["code"] == "worker_stopped"
        after = httpx.post(f"{url}/v1/chat/completions", json=NORMAL, timeout=10)
        assert after.status_code == 503 and after.json()["error"]["code"] == "worker_stopped"


SERVE_WITH_FAULT = """
import sys, time
from persona.serving.batching import ReplyBatcher
from persona.model.running_batch import RunningBatch
join, step = ReplyBatcher._join, RunningBatch.step
def join_or_end(self, batch, arrived):
    if any("end the worker" in request.history[-1] for request in arrived):
        raise SystemExit("injected: the worker ends")
    return join(self, batch, arrived)
def stuck_step(self, tokens):
    time.sleep(3600)
ReplyBatcher._join = join_or_end
if sys.argv[1] == "stuck":
    RunningBatch.step = stuck_step
from persona.commands.serve import main
sys.exit(main(sys.argv[2:]))
"""


def _serve_process(trained_model_dir, fault: str, *options: str):
    port = free_port()
    command = [sys.executable, "-c", SERVE_WITH_FAULT, fault, "--model_name_or_path", str(trained_model_dir)]
    process = subprocess.Popen(
        [*command, "--port", str(port), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError(f"persona-serve did not start: {process.communicate()[1].decode()[-2000:]}")


def test_persona_serve_exits_non_zero_when_its_worker_ends(trained_model_dir):
    process, url = _serve_process(trained_model_dir, "ends")
    try:
        body = {"messages": [{"role": "user", "content": "end the worker"}], "max_tokens": 4}
        assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10).status_code == 503
        assert process.wait(timeout=20) == 1
    finally:
        process.kill()
    assert "The decoding worker has stopped" in process.stderr.read().decode()


def test_sigterm_ends_persona_serve_within_its_grace_while_the_worker_is_stuck(trained_model_dir):
    process, url = _serve_process(trained_model_dir, "stuck", "--shutdown_grace_s", "2")
    try:
        with ThreadPoolExecutor(1) as pool:
            hung = pool.submit(httpx.post, f"{url}/v1/chat/completions", json=NORMAL, timeout=60)
            time.sleep(1)  # the request is in the stuck step
            start = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0
            assert time.monotonic() - start < 2 + 8  # the grace, then a few seconds
            try:  # cancelled after the grace: a server error, or its connection closed
                assert hung.result(timeout=10).status_code >= 500
            except httpx.HTTPError:
                pass
    finally:
        process.kill()


def test_typed_speaker_tokens_stay_plain_text_while_other_threads_use_the_tokenizer(trained_model_dir):
    """The worker encodes texts with a typed ``<speaker2>`` (split into plain tokens) while, on the same tokenizer,
    another thread encodes and calls transformers (which sets the engine's flags at each call), and the event loop
    checks contexts on ``front``: for 3 seconds no typed speaker token becomes the real one and nothing raises
    ("Already borrowed"). Before persona's encoding had an engine of its own, this failed within a second."""
    from persona.serving.batching import ReplyBatcher
    from persona.serving.context import check_context
    from tests.conftest import load_folder

    batcher = ReplyBatcher(
        load_folder(trained_model_dir), max_history=2, max_batch_size=1, max_queue=1, batch_wait_ms=0
    )
    tokenizer, speaker2 = batcher.loaded.tokenizer, batcher.loaded.ids.speaker2
    stop, problems = time.monotonic() + 3, []

    def repeat(work):
        while time.monotonic() < stop and not problems:
            try:
                work()
            except Exception as error:
                problems.append(repr(error))

    def worker_side():
        if any(speaker2 in row for row in batcher.loaded.layout.encode(["<speaker2> hello there " * 20] * 8)):
            problems.append("a typed <speaker2> was encoded as the speaker token")

    def other_user():
        batcher.loaded.layout.encode(["i like cats " * 50] * 8)
        tokenizer("a plain call", add_special_tokens=False)

    def event_loop_side():
        check_context(batcher.front, ["i like cats."] * 20, ["what do you do?"], 4)

    try:
        threads = [
            threading.Thread(target=repeat, args=(work,)) for work in (worker_side, other_user, event_loop_side)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        batcher.close()
    assert problems == []


def test_the_page_checks_the_context_and_its_queue_is_bounded(trained_model_dir, join_sizes):
    """A persona too long for the model's positions is a message on the page, and nothing reaches the worker; a
    normal message is answered; Gradio's queue holds what the batcher's does and polls slowly (QUEUE_POLL_S)."""
    from persona.serving.batching import ReplyBatcher
    from persona.serving.web_page import PROGRESS_POLL_S, QUEUE_POLL_S, build_page, responder
    from tests.conftest import load_folder

    batcher = ReplyBatcher(
        load_folder(trained_model_dir), max_history=2, max_batch_size=2, max_queue=3, batch_wait_ms=0
    )
    respond = responder(batcher, DecodingArguments(max_length=8), max_message_chars=256 * 1024)

    async def answer(persona: str) -> list:
        return [update async for update in respond("hello!", [], persona)]

    try:
        long_persona = " ".join(["a."] * 85_000)  # 85,000 sentences within persona-serve's default body limit
        start = time.monotonic()
        with pytest.raises(gr.Error, match="too long for this bot"):
            asyncio.run(answer(long_persona))
        assert time.monotonic() - start < 30 and join_sizes == []
        updates = asyncio.run(answer(PERSONA))
        assert updates[-1][1][-1]["role"] == "assistant" and updates[-1][1][-1]["content"]
        queue = build_page(batcher, DecodingArguments(), [], "bot", 1000)._queue
        assert queue.max_size == 3
        assert (queue.sleep_when_free, queue.progress_update_sleep_when_free) == (QUEUE_POLL_S, PROGRESS_POLL_S)
    finally:
        batcher.close()


def test_only_allowed_host_names_are_answered(trained_model_dir):
    with live_server(trained_model_dir, allowed_hosts=["bot.example.com"]) as (url, _):
        port = url.rsplit(":", 1)[1]
        for path in ("/", "/v1/models", "/gradio_api/info", "/health"):
            refused = httpx.get(f"{url}{path}", headers={"Host": f"rebound.example:{port}"}, timeout=30)
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "host_not_allowed", path
            assert "--allowed_hosts rebound.example" in refused.json()["error"]["message"]
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"bot.example.com:{port}", "[::1]", "10.1.2.3"):
            assert httpx.get(f"{url}/v1/models", headers={"Host": host}, timeout=30).status_code == 200, host
        chat = httpx.post(
            f"{url}/v1/chat/completions", json=NORMAL, headers={"Host": f"rebound.example:{port}"}, timeout=30
        )
        assert chat.status_code == 400
