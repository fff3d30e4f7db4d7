"""The request cache in front of a chat endpoint (runners/chat_cache.py), against a real
HTTP server on 127.0.0.1: a reply is asked once per (endpoint, model, settings, prompt), at
most `concurrency` at a time; other settings or another model ask again; the key is in no
digest and no stored byte; usage counts stored replies too."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runners.arena.chat_endpoint import ChatEndpoint
from runners.chat_cache import RequestCache, cached_chats, request_digest, usage_of
from tests.servers import QuietHandler, start_in_background

KEY = "sk-cache-test-31f0"


class Echo:
    """Answers each chat request with its prompt reversed; counts requests and the most
    in flight at once."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.in_flight = self.most = 0
        lock = threading.Lock()
        echo = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    echo.requests.append(body)
                    echo.in_flight += 1
                    echo.most = max(echo.most, echo.in_flight)
                time.sleep(0.05)
                with lock:
                    echo.in_flight -= 1
                text = body["messages"][0]["content"][::-1]
                out = json.dumps(
                    {
                        "choices": [{"message": {"content": text}}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 2},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server, self.url = start_in_background(Handler)


@pytest.fixture
def echo() -> Iterator[Echo]:
    server = Echo()
    yield server
    server.server.shutdown()


def test_each_request_is_asked_once_and_the_key_is_never_stored(
    echo: Echo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMOPS_KEY_ECHO", KEY)
    client = ChatEndpoint(echo.url, "echo", api_key_env="LLMOPS_KEY_ECHO")
    cache = RequestCache(tmp_path / "requests.sqlite")
    prompts = [f"prompt {i}" for i in range(6)]
    settings = {"temperature": 0.0, "seed": 0}
    first = cached_chats(client, cache, prompts, 8, settings, concurrency=2)
    assert [r.reply.text for r in first] == [p[::-1] for p in prompts]
    assert not any(r.cached for r in first)
    assert len(echo.requests) == 6 and echo.most == 2

    again = cached_chats(client, cache, prompts, 8, settings, concurrency=2)
    assert all(r.cached for r in again) and len(echo.requests) == 6
    assert [r.reply for r in again] == [r.reply for r in first]
    usage = usage_of(again, client)
    assert (usage["answers"], usage["cached"], usage["prompt_tokens"]) == (6, 6, 30)
    assert usage["requests"] == 6  # this client's: the first pass

    cached_chats(client, cache, prompts[:2], 8, {**settings, "seed": 1}, concurrency=2)
    cached_chats(client, cache, prompts[:1], 9, settings, concurrency=2)
    other = ChatEndpoint(echo.url, "echo-2", api_key_env="LLMOPS_KEY_ECHO")
    cached_chats(other, cache, prompts[:1], 8, settings, concurrency=2)
    assert len(echo.requests) == 6 + 2 + 1 + 1
    cache.close()

    # the key changes nothing a reply is stored by, and is in no stored byte
    monkeypatch.setenv("LLMOPS_KEY_ECHO", "sk-another")
    assert request_digest(client, "p", 8, settings) == request_digest(
        ChatEndpoint(echo.url, "echo", api_key_env="LLMOPS_KEY_ECHO"), "p", 8, settings
    )
    assert all(KEY.encode() not in p.read_bytes() for p in tmp_path.iterdir())
