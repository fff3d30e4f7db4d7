"""Slow-loris defence (runners/serve/connections.py) on a real uvicorn on 127.0.0.1, over both
of uvicorn's HTTP parsers: deadlines for a request's headers and body, and the pending cap."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from runners.serve.config import Limits
from runners.serve.connections import guarded_protocol

BOUND_S = 20.0  # generous: a loaded 2-core machine may be slow, never this slow


def _h11() -> type[Any]:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    return H11Protocol


def _httptools() -> type[Any]:
    pytest.importorskip("httptools", reason="httptools is not installed; h11 is tested either way")
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    return HttpToolsProtocol


@pytest.fixture(params=[_h11, _httptools], ids=["h11", "httptools"])
def base(request: pytest.FixtureRequest) -> type[Any]:
    return request.param()  # type: ignore[no-any-return]


class App:
    """Reads the whole body, then answers its size; /slow waits 1.5 s first."""

    def __init__(self) -> None:
        self.disconnects = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        if scope["path"] == "/slow":
            await asyncio.sleep(1.5)
        body = str(size).encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@contextmanager
def serving(base: type[Any], **limits: Any) -> Iterator[tuple[str, App, type[Any]]]:
    import uvicorn

    app = App()
    protocol = guarded_protocol(base, Limits(**limits))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    config = uvicorn.Config(app, http=protocol, ws="none", lifespan="off", log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    thread.start()
    try:
        give_up = time.monotonic() + BOUND_S
        while not server.started and time.monotonic() < give_up:
            time.sleep(0.01)
        yield f"127.0.0.1:{sock.getsockname()[1]}", app, protocol
    finally:
        server.should_exit = True
        thread.join(timeout=BOUND_S)
        sock.close()


def connect(address: str) -> socket.socket:
    host, port = address.split(":")
    return socket.create_connection((host, int(port)), timeout=BOUND_S)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (BOUND_S at most)."""
    data = b""
    sock.settimeout(BOUND_S)
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return data


def trickle(sock: socket.socket, data: bytes, pause_s: float = 0.05) -> float:
    """Send a byte at a time until the server closes; the seconds it took."""
    start = time.monotonic()
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:  # the server closed: what this test waits for
            break
        time.sleep(pause_s)
    return time.monotonic() - start


def is_open(sock: socket.socket) -> bool:
    """Still open, with nothing from the server yet."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)  # data (an answer) or b"" (closed)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(timeout)


def closes(sock: socket.socket) -> bool:
    """Whether the server closes (or answers) it within BOUND_S."""
    give_up = time.monotonic() + BOUND_S
    while is_open(sock) and time.monotonic() < give_up:
        time.sleep(0.05)
    return not is_open(sock)


HEADERS = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 2000 + b"\r\n\r\n"


def test_headers_sent_a_byte_at_a_time_are_cut_with_408(base: type[Any]) -> None:
    with serving(base, header_timeout_s=0.5, read_timeout_s=1.0) as (address, _, _):
        sock = connect(address)
        start = time.monotonic()
        # Every byte arrives well within uvicorn's keep-alive timeout, which it resets.
        trickle(sock, HEADERS)
        answer = read_all(sock)
        took = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"the headers did not arrive within 0.5 s" in answer
    assert 0.4 <= took < BOUND_S


def test_a_connection_that_sends_nothing_is_cut(base: type[Any]) -> None:
    with serving(base, header_timeout_s=0.5, read_timeout_s=1.0) as (address, _, _):
        answer = read_all(connect(address))
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_a_slow_body_is_cut_and_the_app_sees_the_client_gone(base: type[Any]) -> None:
    with serving(base, header_timeout_s=0.5, read_timeout_s=1.0) as (address, app, _):
        sock = connect(address)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        start = time.monotonic()
        trickle(sock, b"x" * 90, pause_s=0.1)
        answer = read_all(sock)
        took = time.monotonic() - start
        give_up = time.monotonic() + BOUND_S
        while not app.disconnects and time.monotonic() < give_up:
            time.sleep(0.01)
        disconnects = app.disconnects
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"the body did not arrive within 1 s" in answer
    assert 0.4 <= took < BOUND_S
    assert disconnects == 1


def test_a_slow_answer_and_a_fast_keep_alive_client_are_never_cut(base: type[Any]) -> None:
    with (
        serving(base, header_timeout_s=0.5, read_timeout_s=1.0) as (address, _, _),
        httpx.Client(base_url=f"http://{address}", timeout=BOUND_S) as client,
    ):
        # The request is in at once; the app then takes 1.5 s, longer than either deadline.
        assert client.post("/slow", content=b"x" * 50).text == "50"
        time.sleep(1.2)  # idle on the kept-alive connection: uvicorn's keep-alive rules
        assert client.post("/", content=b"y" * 7).text == "7"


def test_the_next_request_on_a_kept_alive_connection_has_its_own_deadline(
    base: type[Any],
) -> None:
    with serving(base, header_timeout_s=0.5, read_timeout_s=1.0) as (address, _, _):
        sock = connect(address)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b"\r\n\r\n0"):  # the whole first answer (its body: "0")
            chunk = sock.recv(4096)
            assert chunk, first
            first += chunk
        assert first.startswith(b"HTTP/1.1 200 ")
        trickle(sock, HEADERS)
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_past_the_cap_the_oldest_pending_connection_is_closed(base: type[Any]) -> None:
    with (
        serving(base, header_timeout_s=60, read_timeout_s=60, max_pending_connections=3) as (
            address,
            _,
            protocol,
        ),
    ):
        slow = []
        for _ in range(5):
            sock = connect(address)
            sock.sendall(b"GET / HTTP/1.1\r\n")
            slow.append(sock)
            time.sleep(0.1)  # the server sees them in this order
        assert all(closes(s) for s in slow[:2])
        cut = [read_all(s) for s in slow[:2]]
        assert [is_open(s) for s in slow[2:]] == [True, True, True]
        # A normal client gets in (closing the oldest still pending), and is answered.
        reply = httpx.post(f"http://{address}/", content=b"abc", timeout=BOUND_S)
        assert reply.text == "3"
        assert closes(slow[2])
        assert [is_open(s) for s in slow[3:]] == [True, True]
        assert len(protocol.pending_connections) == 2
        for sock in slow[2:]:
            sock.close()
    for answer in cut:
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"3 connections were still sending a request" in answer
