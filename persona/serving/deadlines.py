"""Limits on connections: a deadline on receiving each request and a bound on open connections.

uvicorn closes an idle keep-alive connection, but waits for a request's headers and body as long as the client
takes, so a client that sends a few bytes and stops holds a connection forever (slowloris). Here every request must
arrive whole (headers and body) within ``request_timeout_s`` of the moment the server starts waiting for it (the
connection's opening, or the end of the previous answer); past it, a request whose body is still coming is answered
408 and the connection closed, and one whose headers are still coming is closed, as nginx's ``client_header_timeout``
and ``client_body_timeout`` do. An answer being written (a long stream) is not limited. ``max_connections`` bounds the
connections and requests in flight: beyond it uvicorn answers 503.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)
REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class ReceiveDeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline of :attr:`seconds` on receiving each request (see the module)."""

    seconds: float = 60.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.receive_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.receive_deadline = self.loop.call_later(self.seconds, self._overdue)

    def _disarm(self) -> None:
        if self.receive_deadline is not None:
            self.receive_deadline.cancel()
            self.receive_deadline = None

    def _overdue(self) -> None:
        self.receive_deadline = None
        receiving = self.conn.their_state in (h11.IDLE, h11.SEND_BODY)
        if not receiving or self.transport.is_closing():
            return
        if self.conn.their_state is h11.SEND_BODY and not (self.cycle and self.cycle.response_started):
            self.transport.write(REQUEST_TIMEOUT)
        logger.info("Closed a connection whose request did not arrive whole within %g s", self.seconds)
        self.transport.close()


def connection_limits(request_timeout_s: float, max_connections: int | None) -> dict:
    """The uvicorn ``Config`` options of these limits."""
    protocol = type("ReceiveDeadline", (ReceiveDeadlineProtocol,), {"seconds": request_timeout_s})
    return {"http": protocol, "limit_concurrency": max_connections}
