"""The serving runtime under abuse, a real process on 127.0.0.1 with a tiny model: slow-loris
connections are cut after the configured deadlines without keeping normal clients out, and
a client that leaves mid-stream stops its generation and frees its slot."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serving import Runtime, config, running

NAME = "abuse"
HEADER_S, READ_S, PENDING = 4.0, 6.0, 40
LONG = 6000  # tokens a stream asks for: far more than it lives to see
BOUND_S = 60.0  # generous upper bounds: a loaded 2-core machine is slow, never this slow
CHAT = {"model": NAME, "messages": [{"role": "user", "content": "How do I reset it?"}]}


@pytest.fixture(scope="module")
def long_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with room for LONG tokens (RoPE: positions are not learned weights)."""
    folder = tmp_path_factory.mktemp("long") / "model"
    shutil.copytree(tiny_model, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["max_position_embeddings"] = 8192
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="module")
def server(long_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    cfg = config(
        NAME,
        long_model,
        limits={
            "max_concurrency": 1,
            "max_queue": 0,
            "max_tokens": LONG,
            "timeout_s": 600,
            "header_timeout_s": HEADER_S,
            "read_timeout_s": READ_S,
            "max_pending_connections": PENDING,
        },
    )
    with running(cfg, tmp_path_factory.mktemp("abuse")) as runtime:
        yield runtime
    assert "Traceback" not in runtime.stderr()


def metric(runtime: Runtime, name: str, **labels: str) -> float:
    text = httpx.get(f"{runtime.url}/metrics", timeout=BOUND_S).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def connect(runtime: Runtime) -> socket.socket:
    return socket.create_connection(("127.0.0.1", runtime.cfg["port"]), timeout=BOUND_S)


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


def read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except OSError:
        pass
    finally:
        sock.close()
    return data


@pytest.fixture
def trickling() -> Iterator[list[socket.socket]]:
    """Sockets appended here get one header byte every 0.2 s until the server closes them."""
    sockets: list[socket.socket] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(0.2):
            for sock in list(sockets):
                try:
                    sock.send(b"a")
                except OSError:
                    sockets.remove(sock)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield sockets
    stop.set()
    thread.join()


def open_slow(runtime: Runtime) -> socket.socket:
    sock = connect(runtime)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    return sock


def normal_request(runtime: Runtime) -> httpx.Response:
    return httpx.post(
        f"{runtime.url}/v1/chat/completions",
        json={**CHAT, "max_tokens": 4, "temperature": 0},
        timeout=BOUND_S,
    )


def test_thirty_slow_loris_connections_do_not_stop_a_normal_client(
    server: Runtime, trickling: list[socket.socket]
) -> None:
    cut_before = metric(server, "llmops_serve_rejected_total", reason="header_timeout")
    slow = [open_slow(server) for _ in range(30)]
    opened = time.monotonic()
    trickling.extend(slow)
    reply = normal_request(server)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] is not None
    # They were all still there while the normal client was served...
    still_open = [is_open(s) for s in slow]
    answered_after = time.monotonic() - opened
    if answered_after < HEADER_S:  # (on a machine too loaded to answer in time, unprovable)
        assert all(still_open)
    # ...and each is cut with a 408 once its headers are late, however steadily it trickles.
    answers = [read_all(s) for s in slow]
    assert time.monotonic() - opened < HEADER_S + BOUND_S
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert f"the headers did not arrive within {HEADER_S:g} s".encode() in answer
    cut = metric(server, "llmops_serve_rejected_total", reason="header_timeout") - cut_before
    assert cut >= 30


def test_at_the_pending_cap_the_oldest_slow_connection_makes_room(server: Runtime) -> None:
    slow = [open_slow(server) for _ in range(PENDING)]
    reply = normal_request(server)
    assert reply.status_code == 200, reply.text
    # The normal client's connection took the place of the oldest slow one, not of itself.
    oldest = read_all(slow[0])
    assert oldest.startswith(b"HTTP/1.1 408 ")
    assert f"{PENDING} connections were still sending a request".encode() in oldest
    for sock in slow[1:]:
        sock.close()


def test_a_body_sent_too_slowly_is_cut_without_a_traceback(server: Runtime) -> None:
    sock = connect(server)
    body = json.dumps({**CHAT, "max_tokens": 4}).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:10]
    )
    answer = read_all(sock)  # the server stops waiting for the rest after READ_S
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert f"the body did not arrive within {READ_S:g} s".encode() in answer
    assert normal_request(server).status_code == 200
    assert "Traceback" not in server.stderr()


def test_a_client_that_leaves_mid_stream_stops_its_generation_and_frees_the_slot(
    server: Runtime,
) -> None:
    generated = "llmops_serve_generated_tokens_total"
    before = metric(server, generated)
    # min_tokens keeps the tiny model from ending early: left alone it would make LONG.
    body = json.dumps({**CHAT, "max_tokens": LONG, "min_tokens": LONG, "stream": True})
    sock = connect(server)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
    )
    seen = b""
    while seen.count(b"data: {") < 6:  # the role chunk, then five pieces of text
        chunk = sock.recv(4096)
        assert chunk, seen
        seen += chunk
    assert seen.startswith(b"HTTP/1.1 200 ")
    assert metric(server, "llmops_serve_in_flight") == 1  # it holds the only slot
    sock.close()  # the client goes away mid-stream

    give_up = time.monotonic() + BOUND_S
    while metric(server, "llmops_serve_in_flight") != 0 and time.monotonic() < give_up:
        time.sleep(0.1)
    assert metric(server, "llmops_serve_in_flight") == 0
    made = metric(server, generated) - before
    assert 5 <= made < LONG  # it stopped early, and what it made is counted
    time.sleep(1.0)
    assert metric(server, generated) - before == made  # and it stays stopped
    # max_concurrency 1, max_queue 0: a request now is admitted at once, not refused 429.
    reply = normal_request(server)
    assert reply.status_code == 200, reply.text
    assert metric(server, "llmops_serve_requests_total", route="/v1/chat/completions", status="499")


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/chat/completions", CHAT),
        ("/v1/completions", {"model": NAME, "prompt": "How do I reset it?"}),
    ],
    ids=["chat", "completion"],
)
def test_a_client_that_leaves_a_non_streamed_request_stops_its_generation(
    server: Runtime, route: str, body: dict[str, object]
) -> None:
    """Starlette never cancels a handler whose client left, so without watching for the
    disconnect a plain (non-streamed) request would generate all LONG tokens for nobody."""
    generated = "llmops_serve_generated_tokens_total"
    gone_before = metric(server, "llmops_serve_requests_total", route=route, status="499")
    before = metric(server, generated)
    payload = json.dumps({**body, "max_tokens": LONG, "min_tokens": LONG})
    sock = connect(server)
    sock.sendall(
        f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(payload)}\r\n\r\n{payload}".encode()
    )
    give_up = time.monotonic() + BOUND_S
    while metric(server, "llmops_serve_in_flight") != 1 and time.monotonic() < give_up:
        time.sleep(0.05)
    assert metric(server, "llmops_serve_in_flight") == 1  # generating, in the only slot
    time.sleep(0.5)  # well into its LONG tokens
    sock.close()  # the client gives up before the answer

    left = time.monotonic()
    give_up = left + BOUND_S
    while metric(server, "llmops_serve_in_flight") != 0 and time.monotonic() < give_up:
        time.sleep(0.1)
    assert metric(server, "llmops_serve_in_flight") == 0
    made = metric(server, generated) - before
    assert made < LONG / 2, f"{made:g} of {LONG} tokens made for a client that left"
    time.sleep(1.0)
    assert metric(server, generated) - before == made  # and it stays stopped
    # max_concurrency 1, max_queue 0: a request now is admitted at once, not refused 429.
    reply = normal_request(server)
    assert reply.status_code == 200, reply.text
    gone = metric(server, "llmops_serve_requests_total", route=route, status="499")
    assert gone == gone_before + 1  # counted as nginx's "client closed request"
    assert "Traceback" not in server.stderr()
