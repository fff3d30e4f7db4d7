"""The arena's chat endpoint client on a real HTTP server on 127.0.0.1: 5xx and 429 retried
with backoff (Retry-After honoured), other 4xx refused at once naming what to check, usage
read from the reply; endpoint contestants' answers in order, within their concurrency, with
the arena's generation settings and stop strings."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from runners.arena.chat_endpoint import ChatEndpoint, EndpointError
from runners.arena.endpoint_answers import endpoint_answers
from tests.servers import QuietHandler, start_in_background

KEY = "sk-unit-31f0c2"


class Api:
    """Replies from a script of status codes (then 200s), echoing the prompt back."""

    def __init__(self, script: list[int], usage: bool = True, pause_s: float = 0.0) -> None:
        self.script = list(script)
        self.bodies: list[dict[str, Any]] = []
        self.in_flight = self.most = 0
        lock = threading.Lock()
        api = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    api.bodies.append(body)
                    code = api.script.pop(0) if api.script else 200
                    api.in_flight += 1
                    api.most = max(api.most, api.in_flight)
                time.sleep(pause_s)
                with lock:
                    api.in_flight -= 1
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    code = 401
                document: dict[str, Any] = {"error": "no"}
                if code == 200:
                    prompt = body["messages"][0]["content"]
                    document = {"choices": [{"message": {"content": f" echo: {prompt}\n\nmore"}}]}
                    if usage:
                        document["usage"] = {"prompt_tokens": 5, "completion_tokens": 3}
                data = json.dumps(document).encode()
                self.send_response(code)
                if code == 429:
                    self.send_header("Retry-After", "0.01")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server, self.url = start_in_background(Handler)


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("LLMOPS_KEY_UNIT", KEY)
    yield


def client(api: Api, **extra: Any) -> ChatEndpoint:
    return ChatEndpoint(
        api.url, "m", api_key_env="LLMOPS_KEY_UNIT", fields="models[1].endpoint", **extra
    )


def test_5xx_and_429_are_retried_with_backoff_and_usage_is_read(keyed: None) -> None:
    api = Api([503, 429])
    waits: list[float] = []
    endpoint = client(api, backoff_s=0.001, sleep=waits.append)
    reply = endpoint.chat("hi", 8, temperature=0, seed=None)
    assert reply.text == " echo: hi\n\nmore" and (reply.prompt_tokens, reply.completion_tokens) == (
        5,
        3,
    )
    assert reply.latency_s > 0
    assert (endpoint.requests, endpoint.retried) == (3, 2)
    assert waits == [0.001, 0.01]  # backoff, then the Retry-After that is longer
    assert "seed" not in api.bodies[0] and api.bodies[0]["max_tokens"] == 8
    api.server.shutdown()


def test_other_refusals_and_exhausted_retries_say_what_to_check(keyed: None) -> None:
    api = Api([400, 500, 500, 500])
    endpoint = client(api, retries=2, sleep=lambda _: None)
    with pytest.raises(
        EndpointError, match=r"refused the request \(HTTP 400\); check 'models\[1\]"
    ):
        endpoint.chat("hi", 8)
    assert endpoint.requests == 1
    with pytest.raises(
        EndpointError, match=r"HTTP 500 after 2 retries.*'models\[1\]\.endpoint\.retries'"
    ) as err:
        endpoint.chat("hi", 8)
    assert KEY not in str(err.value) and endpoint.requests == 4
    api.server.shutdown()


def test_answers_come_in_order_within_the_concurrency_cut_at_stop(keyed: None) -> None:
    api = Api([], usage=False, pause_s=0.05)
    prompts = [f"q{i}" for i in range(6)]
    generation = {"max_new_tokens": 4, "temperature": 0.0, "seed": 7, "stop": ["\n\n"]}
    replies = endpoint_answers(client(api), prompts, generation, concurrency=2)
    assert [r.text for r in replies] == [f"echo: q{i}" for i in range(6)]
    assert all(r.prompt_tokens is None and r.completion_tokens is None for r in replies)
    assert 1 <= api.most <= 2
    body = api.bodies[0]
    assert body["seed"] == 7 and body["temperature"] == 0.0 and body["stop"] == ["\n\n"]
    assert "top_p" not in body and body["max_tokens"] == 4
    api.server.shutdown()
