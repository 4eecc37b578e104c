"""persona-serve's server: the API and the page in one FastAPI app over one :class:`~persona.serving.engine.Engine`
(persona's own :class:`~persona.serving.batching.ReplyBatcher` on a model it loads, or a
:class:`~persona.serving.remote_engine.RemoteEngine` in front of an OpenAI-compatible server with ``engine_url``),
and its settings (:class:`ServeArguments`, declared once: the engines and the API read them from here).

- ``/``: the chat page (Gradio): streamed replies, an editable persona, a reset.
- ``/v1/chat/completions``, ``/v1/models``: the API that chat clients speak; ``/health``.

It binds 127.0.0.1 unless ``host`` says otherwise; with ``api_key`` every ``/v1`` route needs
``Authorization: Bearer KEY`` and the page asks for it as its password; no CORS unless ``cors_origins``; only the
``Host`` names of :mod:`persona.serving.hosts` are answered.
"""

from __future__ import annotations

import hmac
import math
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from persona.configs import DataArguments, ModelArguments
from persona.data.personas import draw_persona
from persona.errors import ConfigError
from persona.model.generation import DecodingArguments
from persona.model.loading import load_for_inference, refuse_training_fields
from persona.model.scoring import check_rerankable
from persona.serving.batching import ReplyBatcher
from persona.serving.body_limit import BodyLimit
from persona.serving.compute_threads import one_thread
from persona.serving.deadlines import connection_limits
from persona.serving.engine import OWN_ENGINE_ONLY, Engine, own_engine_only
from persona.serving.hosts import OnlyAllowedHosts
from persona.serving.openai_api import HISTORY_CUT_HEADER, create_app
from persona.serving.origins import OnlyAllowedOrigins
from persona.serving.remote_engine import RemoteEngine


@dataclass
class ServeArguments:
    """Options of persona-serve besides the shared ones: the model (``ModelArguments``), ``max_history`` and the corpus
    a default persona is drawn from (``DataArguments``), the default decoding (``DecodingArguments``, which a
    request's ``temperature``, ``top_p`` and ``max_tokens`` override)."""

    host: str = field(
        default="127.0.0.1",
        metadata={"help": "The address to bind: 127.0.0.1 (this machine only) unless told otherwise."},
    )
    port: int = field(default=8000, metadata={"help": "The port to bind."})
    api_key: str | None = field(
        default=None,
        metadata={
            "help": "Require 'Authorization: Bearer KEY' on the API. Default: the first line of api_key_file, else "
            "PERSONA_API_KEY if set (both better than the command line, which other users of the machine can see)."
        },
    )
    api_key_file: str | None = field(default=None, metadata={"help": "A file whose first line is the API key."})
    cors_origins: list[str] = field(
        default_factory=list, metadata={"help": "Origins allowed to call the API from a browser (default: none)."}
    )
    allowed_hosts: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Host names the server answers to besides the bound address, localhost and IP addresses (a DNS "
            "name or a proxy's public name; '*': any). Other Host headers get a 400, against DNS rebinding."
        },
    )
    persona: list[str] = field(
        default_factory=list,
        metadata={"help": "The page's default persona and the API's when a request has no system message."},
    )
    model_id: str | None = field(
        default=None, metadata={"help": "The model's name in the API (default: the folder's or Hub id's last part)."}
    )
    max_batch_size: int = field(
        default=16,
        metadata={"help": "Most requests decoded together, the rows of the running batch (1: one at a time)."},
    )
    batch_wait_ms: float = field(
        default=10.0,
        metadata={
            "help": "How long an idle server waits after a request for others to start with it, in milliseconds "
            "(requests that come later join the running batch between decoding steps)."
        },
    )
    max_queue: int = field(
        default=64,
        metadata={
            "help": "Most replies waiting to join the batch (a request of n choices takes n places); beyond, the API "
            "answers 429."
        },
    )
    prefix_cache_mb: float = field(
        default=512.0,
        metadata={
            "help": "Memory for the keys and values of prompts already read, in MB (0: none): a request that starts "
            "as an earlier one (a chat's next turn repeats the last) reads only what follows. Persona's own engine."
        },
    )
    max_tokens_cap: int = field(default=256, metadata={"help": "The largest max_tokens a request may ask for."})
    max_body_bytes: int = field(default=256 * 1024, metadata={"help": "The largest request body (413 beyond)."})
    request_timeout_s: float = field(
        default=60.0,
        metadata={
            "help": "Seconds a request has to arrive whole, headers and body (then 408 and the connection closed), "
            "against clients that send part of a request and hold the connection."
        },
    )
    max_connections: int = field(
        default=1000, metadata={"help": "Most connections and requests in flight at once (503 beyond)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the default persona's draw."})
    engine_url: str | None = field(
        default=None,
        metadata={
            "help": "Decode with the OpenAI-compatible server at this address (llama-server on a file from "
            "persona-export, vLLM, TGI, Ollama) instead of loading the model here; persona keeps the page, the "
            "persona, the history window and the limits. A model_name_or_path given with it is read without its "
            "weights, to check each conversation's length first (and refused if it reads token types)."
        },
    )
    engine_api_key: str | None = field(
        default=None,
        metadata={"help": "The engine's own API key, if it asks for one. Default: PERSONA_ENGINE_API_KEY if set."},
    )

    shutdown_grace_s: float = field(
        default=30.0,
        metadata={
            "help": "On SIGTERM (or Ctrl-C): how long the requests in flight get to finish while new ones are told "
            "to retry (503)."
        },
    )

    def __post_init__(self):
        if self.api_key is None and self.api_key_file:
            try:
                self.api_key = Path(self.api_key_file).read_text().splitlines()[0].strip()
            except (OSError, IndexError):
                raise ConfigError(
                    "cannot read an API key from it", where=self.api_key_file, fix="write the key on its first line."
                ) from None
            if not self.api_key:
                raise ConfigError(
                    "the first line is empty", where=self.api_key_file, fix="write the key on its first line."
                )
        self.api_key = self.api_key or os.environ.get("PERSONA_API_KEY") or None
        if not (math.isfinite(self.prefix_cache_mb) and self.prefix_cache_mb >= 0):
            raise ConfigError(f"prefix_cache_mb is {self.prefix_cache_mb}", fix="give 0 (none) or more megabytes.")
        self.engine_api_key = self.engine_api_key or os.environ.get("PERSONA_ENGINE_API_KEY") or None


def default_persona(args: ServeArguments, data_args: DataArguments) -> list[str]:
    """``--persona``, else one drawn from ``--dataset_path`` when given, else none (the page's box starts empty)."""
    if args.persona or not data_args.dataset_path:
        return args.persona
    return draw_persona(data_args, args.seed)


def build_engine(
    model_args: ModelArguments | None, data_args: DataArguments, args: ServeArguments, decoding: DecodingArguments
) -> Engine:
    """The engine that decodes: the engine at ``engine_url`` (``model_args``, if any, read without weights for the
    length check), else persona's own on the model of ``model_args``."""
    options = {
        "max_history": data_args.max_history,
        "max_batch_size": args.max_batch_size,
        "max_queue": args.max_queue,
    }
    if args.engine_url:
        unsupported = own_engine_only(decoding)
        if unsupported:
            raise ConfigError(
                f"an OpenAI-compatible engine cannot decode {unsupported} ({OWN_ENGINE_ONLY[unsupported]})",
                where=unsupported,
                fix=f"drop {unsupported}, or serve the model with persona's own engine (no --engine_url).",
            )
        front = None if model_args is None else load_for_inference(model_args, weights=False)
        if front is not None and front.token_types:
            raise ConfigError(
                "this model reads token types, which only persona's own engine feeds",
                where=model_args.model_name_or_path,
                fix="serve it without --engine_url, or train with use_token_types false to serve it elsewhere.",
            )
        return RemoteEngine.connect(args.engine_url, api_key=args.engine_api_key, front=front, **options)
    if model_args is None:
        raise ConfigError(
            "no model to serve",
            where="command line",
            fix="pass --model_name_or_path DIR_OR_HUB_ID, or --engine_url URL of an engine that serves one.",
        )
    with one_thread():  # the worker's OpenMP team the only one (persona.serving.compute_threads)
        loaded = load_for_inference(model_args)
    if decoding.samples > 1:
        check_rerankable(loaded)
    return ReplyBatcher(
        loaded,
        batch_wait_ms=args.batch_wait_ms,
        prefix_cache_bytes=int(args.prefix_cache_mb * 2**20),
        **options,
    )


def build_server(
    model_args: ModelArguments | None, data_args: DataArguments, args: ServeArguments, decoding: DecodingArguments
):
    """The ASGI app (FastAPI, the API and the page mounted at ``/``, CORS only for ``cors_origins``), and its engine
    (close it when done); ``model_args`` None: no model named (only with ``engine_url``)."""
    import gradio as gr
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import JSONResponse

    from persona.serving.web_page import build_page

    if model_args is not None:
        refuse_training_fields(model_args, "persona-serve")
    engine = build_engine(model_args, data_args, args, decoding)
    model_id = args.model_id or (
        Path(model_args.model_name_or_path.rstrip("/")).name if model_args is not None else engine.model
    )
    persona = default_persona(args, data_args)
    app = create_app(engine, model_id, defaults=decoding, persona=persona, settings=args)
    if args.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=args.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=[HISTORY_CUT_HEADER],
        )
    page = build_page(engine, decoding, persona, model_id, max_message_chars=args.max_body_bytes)
    auth = (
        (lambda user, password: hmac.compare_digest(password.encode(), args.api_key.encode()))
        if args.api_key
        else None
    )

    @app.post("/gradio_api/upload")  # before the page's own routes: the page takes no files, from anyone
    async def no_uploads() -> JSONResponse:
        return JSONResponse({"detail": "this page takes no files"}, status_code=404)

    app = gr.mount_gradio_app(
        app,
        page,
        path="/",
        auth=auth,
        auth_message="The password is the server's API key.",
        footer_links=[],
        run_history=False,  # Gradio's record of calls, its routes and its Hub bucket: not persona's to offer
    )
    guarded = OnlyAllowedOrigins(BodyLimit(app, args.max_body_bytes), args.cors_origins)
    return OnlyAllowedHosts(guarded, args.host, args.allowed_hosts), engine


@contextmanager
def serving_in_thread(app, host: str, port: int, **options):
    """An ASGI ``app`` served by uvicorn on ``host:port`` (and uvicorn ``Config`` ``options``) in a thread of this
    process (tests, benchmarks): yields its base URL once it listens; stops it on exit."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", **options))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        if not server.started:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def running_server(
    model_args: ModelArguments | None, data_args: DataArguments, args: ServeArguments, decoding: DecodingArguments
):
    """The server of :func:`build_server` running in a thread of this process (:func:`serving_in_thread`): yields its
    base URL and its engine; stops it and closes the engine on exit."""
    app, engine = build_server(model_args, data_args, args, decoding)
    try:
        limits = connection_limits(args.request_timeout_s, args.max_connections)
        with serving_in_thread(app, args.host, args.port, **limits) as url:
            yield url, engine
    finally:
        engine.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
