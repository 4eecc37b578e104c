"""CORS for the whole server, Gradio's routes included: a browser may call it from another origin only when that
origin is one of ``--cors_origins``. Gradio's own middleware grants localhost origins (with credentials); this
wrapper removes the ``Access-Control-*`` headers of every answer to any other origin, so the browser refuses it."""

from __future__ import annotations


class OnlyAllowedOrigins:
    """Wraps an ASGI app: answers to a request from an origin outside ``origins`` carry no CORS header."""

    def __init__(self, app, origins: list[str]):
        self.app, self.origins = app, set(origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = dict(scope.get("headers", [])).get(b"origin", b"").decode("latin-1")
        if not origin or origin in self.origins:
            await self.app(scope, receive, send)
            return

        async def without_cors(message):
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if not k.lower().startswith(b"access-control-")
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, without_cors)
