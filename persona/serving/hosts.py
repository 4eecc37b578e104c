"""The ``Host`` allowlist of persona-serve, against DNS rebinding: a web page on a name its author controls, once the
name resolves to 127.0.0.1, is same-origin with the server as far as the browser knows, so an Origin check passes it;
its requests still carry that name in ``Host``. The server answers only the names it is reached by: the address it
is bound to, ``localhost``, any IP address (a rebinding needs a name), and ``--allowed_hosts`` (``*``: any); every
other ``Host`` gets a 400 before anything runs."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from persona.serving.protocol import APIError


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without its port (an IPv6 address without its brackets), lower case."""
    try:
        return (urlsplit(f"//{header}").hostname or "").lower()
    except ValueError:  # a malformed port or bracket
        return header.lower()


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class OnlyAllowedHosts:
    """Wraps an ASGI app: HTTP and WebSocket requests whose ``Host`` names none of ``bound`` (the address the server
    binds), ``localhost``, an IP address or ``allowed`` get a 400 in OpenAI's error shape."""

    def __init__(self, app, bound: str, allowed: list[str]):
        self.app = app
        self.any = "*" in allowed
        self.names = {host_name(name) for name in [bound, *allowed] if name != "*"} | {"localhost"}

    def allows(self, header: str) -> bool:
        """Whether a request with this ``Host`` header is answered (one without a ``Host`` is: no browser sends it)."""
        name = host_name(header)
        return self.any or not header or name in self.names or name.endswith(".localhost") or _is_address(name)

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            header = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
            if not self.allows(header):
                await self._refuse(scope, receive, send, host_name(header))
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope, receive, send, name: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        refusal = APIError(
            400,
            f"this server does not answer to the host name '{name}'; if that is how clients reach it (a proxy, a DNS "
            f"name), start it with --allowed_hosts {name}",
            code="host_not_allowed",
        )
        await refusal.response()(scope, receive, send)
