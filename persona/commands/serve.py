"""``persona-serve --model_name_or_path DIR_OR_HUB_ID [--port 8000] [--api_key KEY]``: a web chat page and an
OpenAI-compatible API for a persona bot, in one process (:mod:`persona.serving.server`); with ``--engine_url URL``,
the same in front of an OpenAI-compatible engine that decodes (llama-server on a file from persona-export, vLLM).

Requests that arrive together are generated together. It binds 127.0.0.1 unless ``--host`` says otherwise; with
``--api_key`` (or ``PERSONA_API_KEY``) every ``/v1`` route needs ``Authorization: Bearer KEY`` and the page asks for
it as its password; no CORS unless ``--cors_origins``.
"""

from __future__ import annotations

import logging
import sys

from persona.commands.cli import cli_entry, parse_recipe, setup_logging
from persona.configs import DataArguments, ModelArguments
from persona.model.generation import DecodingArguments
from persona.serving.deadlines import connection_limits
from persona.serving.server import ServeArguments, build_server
from persona.serving.shutdown import CANCEL_AFTER_S, Drain, DrainingServer

logger = logging.getLogger("persona")


@cli_entry
def main(argv: list[str]) -> int:
    """Load the model, then serve the page and the API until interrupted (0) or until its decoding worker has
    ended (1, for a supervisor to restart it)."""
    import uvicorn

    classes = (ModelArguments, DataArguments, ServeArguments, DecodingArguments)
    (model_args, data_args, args, decoding), as_run = parse_recipe(
        argv, classes, prog="persona-serve", description=__doc__
    )
    setup_logging()
    named = "model_name_or_path" in as_run or not args.engine_url  # in front of an engine, a model is optional
    app, engine = build_server(model_args if named else None, data_args, args, decoding)
    logger.info(
        "Serving %s on http://%s:%d/ (the page) and /v1 (the API)%s",
        args.engine_url or model_args.model_name_or_path,
        args.host,
        args.port,
        ", API key required" if args.api_key else "",
    )
    app = Drain(app)
    limits = connection_limits(args.request_timeout_s, args.max_connections)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", **limits)
    server = DrainingServer(config, app, args.shutdown_grace_s, healthy=engine.alive)
    try:
        server.run()
    finally:
        engine.close(timeout_s=CANCEL_AFTER_S)  # the requests have had their grace period
    if server.failed:
        logger.error("Stopped: the decoding worker had ended")
        return 1
    logger.info("Stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
