"""CORS for the whole server, Gradio's routes included: a browser may call it from another origin only when that
origin is one of ``--cors_origins``. Gradio's own middleware grants localhost origins (with credentials); this
wrapper removes the ``Access-Control-*`` headers of every answer to any other origin, so the browser refuses to read
it. A request that changes something (POST, PUT, PATCH, DELETE) from any other origin is refused outright (403)
before it runs: a browser sends a ``text/plain`` POST to another site without asking first, and reading the answer
is not needed to spend the model's time or post to the chat. Requests without an ``Origin`` (curl, SDKs) and the
page's own (its origin is the server's: the ``Host`` the request was sent to, or the ``X-Forwarded-Host`` a proxy
passes on) pass."""

from __future__ import annotations

from urllib.parse import urlsplit

from persona.serving.protocol import APIError

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class OnlyAllowedOrigins:
    """Wraps an ASGI app: a request from an origin outside ``origins`` (and not the server's own) gets answers
    without CORS headers, and a 403 for an unsafe method."""

    def __init__(self, app, origins: list[str]):
        self.app, self.origins = app, set(origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        origin = headers.get(b"origin", b"").decode("latin-1")
        hosts = {headers.get(name, b"").decode("latin-1") for name in (b"host", b"x-forwarded-host")}
        if not origin or origin in self.origins or urlsplit(origin).netloc in hosts - {""}:
            await self.app(scope, receive, send)
            return
        if scope["method"] in UNSAFE_METHODS:
            await _refuse(scope, receive, send, origin)
            return

        async def without_cors(message):
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if not k.lower().startswith(b"access-control-")
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, without_cors)


async def _refuse(scope, receive, send, origin: str) -> None:
    """403 in OpenAI's error shape for a request from an origin the server does not allow."""
    refusal = APIError(
        403,
        f"requests from the origin {origin} are not allowed; start the server with --cors_origins {origin}",
        code="origin_not_allowed",
    )
    await refusal.response()(scope, receive, send)
