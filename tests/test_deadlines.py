"""A request must arrive whole within the server's deadline (headers and body; a half-sent one is closed, its body's
wait answered 408), an answer being written is not limited, and connections beyond the bound are answered 503."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from persona.serving.deadlines import connection_limits
from persona.serving.server import free_port, serving_in_thread


async def echo(request):
    return PlainTextResponse(await request.body())


async def slow_stream(request):
    async def pieces():
        for piece in ("a", "b", "c"):
            yield piece
            await asyncio.sleep(0.6)

    return StreamingResponse(pieces())


APP = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/stream", slow_stream)])


def _closed_within(client: socket.socket, seconds: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and after how long (at most ``seconds``)."""
    start, received = time.monotonic(), b""
    client.settimeout(seconds)
    while True:
        piece = client.recv(4096)
        if not piece:
            return received, time.monotonic() - start
        received += piece


def test_a_half_sent_request_is_closed_at_the_deadline_and_a_whole_one_is_answered():
    port = free_port()
    with serving_in_thread(APP, "127.0.0.1", port, **connection_limits(1.0, 100)) as url:
        with socket.create_connection(("127.0.0.1", port)) as client:  # headers cut short
            client.sendall(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            answer, after = _closed_within(client, 10)
        assert answer == b"" and 0.5 < after < 5
        with socket.create_connection(("127.0.0.1", port)) as client:  # 10 of the 100 bytes it announced
            client.sendall(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n0123456789")
            answer, after = _closed_within(client, 10)
        assert answer.startswith(b"HTTP/1.1 408") and after < 5
        with socket.create_connection(("127.0.0.1", port)) as client:  # nothing at all
            answer, after = _closed_within(client, 10)
        assert answer == b"" and after < 5
        assert httpx.post(f"{url}/echo", content=b"hello", timeout=10).text == "hello"
        with httpx.Client(timeout=10) as keep_alive:  # a later request on the same connection has its own deadline
            assert keep_alive.post(f"{url}/echo", content=b"one").text == "one"
            time.sleep(0.7)
            assert keep_alive.post(f"{url}/echo", content=b"two").text == "two"
        streamed = httpx.get(f"{url}/stream", timeout=10)  # 1.8 s of answer: not limited
        assert streamed.status_code == 200 and streamed.text == "abc"


def test_connections_beyond_the_bound_are_answered_503():
    port = free_port()
    with serving_in_thread(APP, "127.0.0.1", port, **connection_limits(30.0, 3)) as url:
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            time.sleep(0.2)
            assert httpx.post(f"{url}/echo", content=b"x", timeout=10).status_code == 503
        finally:
            for client in idle:
                client.close()
        time.sleep(0.3)
        assert httpx.post(f"{url}/echo", content=b"x", timeout=10).status_code == 200
