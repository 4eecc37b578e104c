"""One body limit for every route of the server, the page's (Gradio's) included: a request whose body is over
``--max_body_bytes`` gets a 413 in OpenAI's error shape, declared (``Content-Length``) or counted as it streams in
(a chunked body), and is never read further nor buffered whole."""

from __future__ import annotations

from persona.serving.protocol import body_too_large


class BodyLimit:
    """Wraps an ASGI app: bodies over ``limit`` bytes are answered 413; past the limit the app is told the client
    left, and whatever it answers then is dropped."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await body_too_large(self.limit).response()(scope, receive, send)
            return
        state = {"read": 0, "refused": False, "started": False}

        async def counted():
            if state["refused"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > self.limit:
                    state["refused"] = True
                    if not state["started"]:
                        await body_too_large(self.limit).response()(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def unless_refused(message):
            if state["refused"]:
                return  # the 413 is the answer
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, unless_refused)
