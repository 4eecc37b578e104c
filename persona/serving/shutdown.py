"""A graceful stop for persona-serve: on SIGTERM (or Ctrl-C) the server stops taking requests, answering them 503
with ``Retry-After``, finishes the ones it holds within a grace period, then exits 0; a second signal exits at once.
A request still running after the grace period is cancelled within :data:`CANCEL_AFTER_S`, whatever the decoding
worker is doing. When ``healthy`` turns false (the decoding worker has ended) the server stops by itself and
:attr:`DrainingServer.failed` says so, for the command to exit non-zero.

:class:`Drain` counts the requests in flight (a pure ASGI middleware, so that a streamed reply counts until its
last chunk), and :class:`DrainingServer` is uvicorn's server whose first signal starts the drain instead of closing
the listening socket at once (which would refuse new connections instead of telling clients to retry).
"""

from __future__ import annotations

import json
import logging
import threading
import time

import uvicorn

logger = logging.getLogger("persona")
RETRY_AFTER_S = 5
CANCEL_AFTER_S = 2.0  # how long uvicorn waits, after the grace period, for the requests still running


class Drain:
    """The requests in flight and whether the server is draining; wraps the ASGI app (``app = Drain(app)``)."""

    def __init__(self, app):
        self.app = app
        self.draining = False
        self.in_flight = 0
        self._lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.draining:
            await _unavailable(send)
            return
        with self._lock:
            self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            with self._lock:
                self.in_flight -= 1

    def wait_idle(self, grace_s: float) -> int:
        """Wait until no request is in flight, at most ``grace_s`` seconds; the requests still in flight."""
        deadline = time.monotonic() + grace_s
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.in_flight


async def _unavailable(send) -> None:
    body = {
        "error": {
            "message": "the server is shutting down; retry shortly",
            "type": "server_error",
            "param": None,
            "code": "shutting_down",
        }
    }
    headers = [(b"content-type", b"application/json"), (b"retry-after", str(RETRY_AFTER_S).encode())]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining ``drain`` for up to ``grace_s`` seconds on the first stop signal, and stopping by
    itself (``failed``) once ``healthy()`` is false. After the drain, uvicorn waits :data:`CANCEL_AFTER_S` for the
    requests still running (``config.timeout_graceful_shutdown``): they have had their grace period."""

    def __init__(self, config: uvicorn.Config, drain: Drain, grace_s: float, healthy=lambda: True):
        config.timeout_graceful_shutdown = CANCEL_AFTER_S
        super().__init__(config)
        self.drain, self.grace_s, self.healthy = drain, grace_s, healthy
        self.failed = False

    async def on_tick(self, counter: int) -> bool:
        if not self.failed and not self.healthy():
            logger.critical("The decoding worker has stopped: the server stops (a supervisor may restart it)")
            self.failed = True
        return self.failed or await super().on_tick(counter)

    def handle_exit(self, sig, frame) -> None:
        if self.drain.draining:  # a second signal: stop now
            self.force_exit = True
            super().handle_exit(sig, frame)
            return
        self.drain.draining = True
        logger.info(
            "Stopping: no new requests (503), %d in flight get up to %g s to finish",
            self.drain.in_flight,
            self.grace_s,
        )
        threading.Thread(target=self._exit_when_idle, name="persona-drain", daemon=True).start()

    def _exit_when_idle(self) -> None:
        left = self.drain.wait_idle(self.grace_s)
        if left:
            logger.warning("Stopping with %d request(s) unfinished after the %g s grace period", left, self.grace_s)
        self.should_exit = True
