"""persona-serve in front of an OpenAI-compatible engine (``--engine_url``): another persona-serve and llama.cpp's own
server (llama-cpp-python's) as the engines, each started by the test on a free 127.0.0.1 port."""

from __future__ import annotations

import asyncio
import re
from contextlib import ExitStack, contextmanager

import httpx
import pytest

from persona.configs import DataArguments, ModelArguments
from persona.model.generation import DecodingArguments
from persona.serving.remote_engine import _EngineReply, engine_base, engine_refusal, engine_request
from persona.serving.server import ServeArguments, free_port, running_server, serving_in_thread
from tests.test_serve import ASK, PERSONA, _client, live_server

LONG_CHAT = [{"role": "system", "content": PERSONA}] + [
    {"role": "user" if index % 2 == 0 else "assistant", "content": f"utterance number {index}."} for index in range(7)
]


@contextmanager
def in_front_of(engine_url: str, model_dir=None, max_history: int = 2, **options):
    """persona-serve with ``--engine_url engine_url`` (and the model folder read without weights, if given)."""
    args = ServeArguments(port=free_port(), engine_url=engine_url, **options)
    model_args = ModelArguments(model_name_or_path=str(model_dir)) if model_dir else None
    with running_server(model_args, DataArguments(max_history=max_history), args, DecodingArguments()) as served:
        yield served


@pytest.fixture(scope="module")
def engine(trained_model_dir):
    """persona-serve on the tiny trained model: the engine the other persona-serve stands in front of."""
    with live_server(trained_model_dir, max_tokens_cap=32) as (url, _):
        yield url


def _asked(client, model: str, messages: list[dict], **options):
    answer = client.chat.completions.create(model=model, messages=messages, **options)
    return [choice.message.content for choice in answer.choices], answer


def test_the_decoding_settings_mean_what_they_mean_here():
    greedy = engine_request(["i like cats."], ["hi!"], DecodingArguments(do_sample=False, max_length=9), model="m")
    assert greedy["messages"] == [{"role": "system", "content": "i like cats."}, {"role": "user", "content": "hi!"}]
    assert greedy["temperature"] == 0.0 and "top_p" not in greedy and greedy["max_tokens"] == 9
    assert greedy["stream"] and greedy["stream_options"] == {"include_usage": True}
    assert engine_request([], ["a"], DecodingArguments(temperature=1e-300), model="m")["temperature"] == 0.0
    sampled = engine_request(
        [], ["a", "b", "c"], DecodingArguments(repetition_penalty=1.3, min_length=3), model="m", seed=5, stop=["\n"]
    )
    assert [m["role"] for m in sampled["messages"]] == ["system", "user", "assistant", "user"]
    assert (sampled["temperature"], sampled["top_p"], sampled["top_k"], sampled["min_p"]) == (0.7, 0.9, 0, 0.0)
    assert sampled["repetition_penalty"] == sampled["repeat_penalty"] == 1.3 and sampled["min_tokens"] == 3
    assert sampled["seed"] == 5 and sampled["stop"] == ["\n"] and "logprobs" not in sampled
    assert engine_request([], ["a"], DecodingArguments(), model="m", top_logprobs=0)["top_logprobs"] == 0
    assert (
        engine_base(" http://127.0.0.1:8080/v1/ ") == engine_base("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    )


def test_an_engines_refusal_keeps_its_meaning():
    refused = engine_refusal("E", 400, b'{"error": {"message": "the request exceeds the available context size"}}')
    assert (refused.status, refused.code) == (400, "context_length_exceeded") and "context size" in refused.error
    coded = engine_refusal("E", 400, b'{"error": {"message": "no", "code": "invalid_value"}}')
    assert (coded.status, coded.code) == (400, "invalid_value")
    assert (engine_refusal("E", 429, b"slow down").status, engine_refusal("E", 503, b"{}").status) == (429, 503)
    broken = engine_refusal("http://user:secret@engine", 401, b'{"error": "bad key"}')
    assert (broken.status, broken.code) == (502, "engine_error") and broken.error == "the engine answered 401: bad key"
    numbered = engine_refusal("E", 400, b'{"error": {"code": 400, "message": "the request exceeds the context"}}')
    assert (numbered.status, numbered.code) == (400, "context_length_exceeded")  # llama.cpp's integer code
    huge = engine_refusal("E", 400, b'{"error": {"code": ' + b"7" * 5000 + b', "message": "' + b"x" * 9000 + b'"}}')
    assert huge.status == 400 and len(huge.error) < 400 and len(huge.code) <= 64


def _stand_in_engine(answer):
    """An OpenAI-compatible stand-in whose chat completions are ``answer()`` (a Starlette response)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": "stand-in", "object": "model"}]})

    async def chat(request):
        return answer()

    routes = [Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])]
    return serving_in_thread(Starlette(routes=routes), "127.0.0.1", free_port())


@pytest.mark.parametrize("stream", [False, True])
def test_an_engine_answering_as_llama_cpp_does_keeps_its_meaning(stream):
    """llama.cpp's 400 with an integer code is the client's 400 (not a 500), streamed or not; chunks that are not JSON
    objects (a list, a string) are a 502 that names no address."""
    from starlette.responses import JSONResponse, StreamingResponse

    def refusal():
        error = {"code": 400, "message": "the request exceeds the available context size", "type": "exceed_context"}
        return JSONResponse({"error": error}, status_code=400)

    def malformed():
        lines = ["data: [1, 2]\n\n", 'data: "text"\n\n', 'data: {"choices": "nothing"}\n\n', "data: [DONE]\n\n"]
        return StreamingResponse(iter(lines), media_type="text/event-stream")

    body = {"messages": ASK, "max_tokens": 4, "stream": stream}
    for answer, status, code in ((refusal, 400, "context_length_exceeded"), (malformed, 502, "engine_error")):
        with _stand_in_engine(answer) as engine_url, in_front_of(engine_url) as (url, remote):
            reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
            assert reply.status_code == status, reply.text
            assert reply.json()["error"]["code"] == code and engine_url not in reply.text and remote.in_flight == 0


def test_an_engines_text_is_sent_as_persona_sends_its_own():
    """No leading white space, trailing white space held until more text comes, the log-probabilities with the
    delta that carries their tokens, the end's usage counted from the chunks when the engine reports none."""
    reply = _EngineReply()
    sent = [reply.add(piece, [{"token": piece}]) for piece in (" ", "hello", " ", "there", " ")]
    assert [event.delta if event else None for event in sent] == [None, "hello", None, " there", None]
    assert [entry["token"] for entry in sent[1].logprobs] == [" ", "hello"]
    *last, end = reply.end("stop", None)
    assert last == [] and end.finish_reason == "stop" and end.completion_tokens == 5
    assert [entry["token"] for entry in end.logprobs] == [" "]
    counted = _EngineReply()
    counted.add("hi", [])
    assert counted.end("length", {"prompt_tokens": 7, "completion_tokens": 2})[-1].prompt_tokens == 7


def test_in_front_of_another_persona_serve_the_replies_are_the_engines_own(engine, trained_model_dir):
    """Greedy, seeded sampling with ``n`` 2 and log-probabilities: persona-serve in front of the engine answers what
    the engine answers to the same request (the seeds of the choices are the engine's own), usage included;
    streamed, the deltas add up to the whole reply."""
    model = trained_model_dir.name
    with in_front_of(engine) as (url, remote):
        assert remote.model == model and _client(url).models.list().data[0].id == model
        for options in (
            {"temperature": 0, "max_tokens": 12},
            {"temperature": 1.0, "seed": 7, "n": 2, "max_tokens": 12},
            {"temperature": 0, "max_tokens": 6, "logprobs": True, "top_logprobs": 2},
        ):
            texts, through = _asked(_client(url), model, ASK, **options)
            expected, direct = _asked(_client(engine), model, ASK, **options)
            assert texts == expected and all(texts)
            assert through.usage.model_dump() == direct.usage.model_dump()
            assert [c.finish_reason for c in through.choices] == [c.finish_reason for c in direct.choices]
            if options.get("logprobs"):
                assert through.choices[0].logprobs.model_dump() == direct.choices[0].logprobs.model_dump()
        chunks = list(
            _client(url).chat.completions.create(
                model=model,
                messages=ASK,
                temperature=0,
                max_tokens=12,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        greedy, _ = _asked(_client(engine), model, ASK, temperature=0, max_tokens=12)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == greedy[0]
        assert chunks[-1].usage.completion_tokens > 0


def test_the_history_window_is_persona_serves(engine, trained_model_dir):
    """A conversation of seven utterances in front of the engine, with ``max_history`` 1: the engine is asked about
    the last three (the header says four were left out), as persona's own engine would read them."""
    model = trained_model_dir.name
    with in_front_of(engine, max_history=1) as (url, _):
        answer = httpx.post(
            f"{url}/v1/chat/completions",
            json={"messages": LONG_CHAT, "temperature": 0, "max_tokens": 8},
            timeout=60,
        )
    assert answer.status_code == 200 and answer.headers["X-Persona-History-Cut"] == "4"
    windowed, _ = _asked(_client(engine), model, [LONG_CHAT[0], *LONG_CHAT[-3:]], temperature=0, max_tokens=8)
    assert answer.json()["choices"][0]["message"]["content"] == windowed[0]


def test_the_engines_errors_and_its_absence_are_answered(trained_model_dir):
    """The engine's 400 (a context too long for it) is the client's, with its code; more choices than persona-serve
    queues is a 400 before the engine; once the engine has gone away, a chat is a 502 naming it and /health a 503."""
    long = [{"role": "system", "content": "i like cats. " * 300}, ASK[1]]
    with ExitStack() as engine_side:
        short_lived, _ = engine_side.enter_context(live_server(trained_model_dir))
        with in_front_of(short_lived, max_batch_size=1, max_queue=1) as (url, remote):
            refused = httpx.post(f"{url}/v1/chat/completions", json={"messages": long, "max_tokens": 4}, timeout=60)
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
            many = httpx.post(f"{url}/v1/chat/completions", json={"messages": ASK, "n": 3}, timeout=60)
            assert many.status_code == 400 and many.json()["error"]["code"] == "too_many_choices"
            assert httpx.get(f"{url}/health", timeout=10).status_code == 200
            engine_side.close()  # the engine stops; persona-serve goes on
            gone = httpx.post(f"{url}/v1/chat/completions", json={"messages": ASK, "max_tokens": 4}, timeout=60)
            health = httpx.get(f"{url}/health", timeout=30)
    assert gone.status_code == 502 and gone.json()["error"]["code"] == "engine_error"
    assert short_lived not in gone.text and remote.in_flight == 0  # the engine's address is in the log only
    assert health.status_code == 503 and health.json()["error"]["code"] == "engine_unavailable"
    assert short_lived not in health.text


def test_the_engine_is_looked_for_at_start_and_token_types_stay_with_persona(engine, trained_model_dir, capsys):
    from persona.commands.serve import main as serve_main

    nothing = f"http://127.0.0.1:{free_port()}"
    assert serve_main(["--engine_url", nothing, "--port", str(free_port())]) == 2
    error = capsys.readouterr().err
    assert f"no OpenAI-compatible engine answers {nothing}/v1/models" in error and "--engine_url" in error
    assert serve_main(["--engine_url", engine, "--model_name_or_path", str(trained_model_dir)]) == 2
    assert "reads token types, which only persona's own engine feeds" in capsys.readouterr().err


def test_a_prompted_chat_model_behind_an_engine_is_checked_here_and_the_page_talks_to_it(plain_chat_model):
    """The engine: persona-serve on a chat model persona never trained (prompted through its template); in front of
    it, persona-serve with that model's folder read without weights: a persona too long for the model is refused
    here (the engine never sees it), and the page's answer is the engine's reply."""
    from persona.serving.web_page import responder

    def chats_answered(engine_url: str) -> float:
        metrics = httpx.get(f"{engine_url}/metrics", timeout=10).text
        found = re.search(r'persona_requests_total\{route="/v1/chat/completions",status="200"\} (\S+)', metrics)
        return float(found.group(1)) if found else 0.0

    with live_server(plain_chat_model) as (engine_url, _), in_front_of(engine_url, plain_chat_model) as (url, remote):
        assert remote.front is not None and remote.front.model is None and remote.front.prompted
        long = [{"role": "system", "content": "i like cats. " * 400}, ASK[1]]
        refused = httpx.post(f"{url}/v1/chat/completions", json={"messages": long, "max_tokens": 4}, timeout=60)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
        assert chats_answered(engine_url) == 0
        respond = responder(remote, DecodingArguments(do_sample=False, max_length=8), max_message_chars=4096)

        async def page_answer() -> list:
            return [update async for update in respond(ASK[1]["content"], [], PERSONA)]

        page_reply = asyncio.run(page_answer())[-1][1][-1]["content"]
        assert chats_answered(engine_url) == 1
        direct, _ = _asked(_client(engine_url), plain_chat_model.name, ASK, temperature=0, max_tokens=8)
        assert page_reply == direct[0]


@contextmanager
def llama_cpp_server(gguf, n_ctx: int):
    """llama.cpp's OpenAI-compatible server (llama-cpp-python's) on ``gguf``, on a free 127.0.0.1 port."""
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    port = free_port()
    model = ModelSettings(model=str(gguf), n_ctx=n_ctx, n_threads=1, verbose=False)
    app = create_app(server_settings=ServerSettings(host="127.0.0.1", port=port), model_settings=[model])
    with serving_in_thread(app, "127.0.0.1", port) as url:
        yield url


def test_in_front_of_llama_cpps_server_on_an_exported_file(template_trained, tmp_path):
    """The chat-template model exported by persona-export and served by llama.cpp: persona-serve in front of it
    answers what llama.cpp answers to the persona and conversation (greedy), whole and streamed."""
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is absent: pip install -e '.[llama]'")
    from persona.commands.export import main as export_main
    from tests.conftest import load_folder

    gguf = tmp_path / "bot.gguf"
    assert export_main([str(template_trained), "--gguf", str(gguf), "--outtype", "f32"]) == 0
    positions = load_folder(template_trained).max_positions
    with llama_cpp_server(gguf, positions) as engine_url, in_front_of(engine_url, template_trained) as (url, remote):
        direct, _ = _asked(_client(engine_url), remote.model, ASK, temperature=0, max_tokens=10)
        texts, through = _asked(_client(url), template_trained.name, ASK, temperature=0, max_tokens=10)
        assert texts == [direct[0].strip()] and through.usage.completion_tokens > 0
        streamed = _client(url).chat.completions.create(
            model=template_trained.name, messages=ASK, temperature=0, max_tokens=10, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == texts[0]
