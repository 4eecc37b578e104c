"""``GET /metrics`` in Prometheus' text format (prometheus-client): requests by route and status, their latency,
tokens read and written, the queue's depth and the rows of the running batch at each decoding step (persona's own
engine); one registry
per server, so that servers in one process (tests, benchmarks) keep their own counts."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from persona.serving.engine import Engine


class ServerMetrics:
    """The server's counters; :meth:`observe` is an HTTP middleware, :meth:`exposition` the page Prometheus reads."""

    def __init__(self, engine: Engine):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "persona_requests",
            "API requests answered, by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "persona_request_seconds",
            "Time to answer an API request (to its first byte when streamed)",
            ["route"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.tokens = Counter(
            "persona_tokens", "Tokens read (prompt) and written (completion)", ["kind"], registry=self.registry
        )
        batch_rows = Histogram(
            "persona_batch_rows",
            "Requests decoded together, at each decoding step",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        engine.on_step = batch_rows.observe
        queue = Gauge("persona_queue_depth", "Requests waiting for the model", registry=self.registry)
        queue.set_function(engine.queue_depth)

    async def observe(self, request, call_next):
        """Count and time every ``/v1`` request (an HTTP middleware)."""
        if not request.url.path.startswith("/v1/"):
            return await call_next(request)
        start = time.perf_counter()
        response = await call_next(request)
        route = request.url.path if request.url.path in ("/v1/chat/completions", "/v1/models") else "other"
        self.requests.labels(route, str(response.status_code)).inc()
        self.latency.labels(route).observe(time.perf_counter() - start)
        return response

    def count_tokens(self, prompt: int, completion: int) -> None:
        """Add a finished reply's usage."""
        self.tokens.labels("prompt").inc(prompt)
        self.tokens.labels("completion").inc(completion)

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
