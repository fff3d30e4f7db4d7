"""The demo's facts check (examples/openai_app/facts_check.py) against a deployment that is
slow: a real HTTP server on 127.0.0.1 speaking the deployment's API answers some questions
with the runtime's 504 first. Those are retried with backoff; one that never gets an answer
is reported as that question's failure, and the check goes on."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT_ROOT
from tests.servers import serve

SCRIPT = PROJECT_ROOT / "examples/openai_app/facts_check.py"
CHECKS = [
    {"question": "How do I reset my password?", "keywords": ["60 minutes"]},
    {"question": "What does the business plan cost?", "keywords": ["$16"]},
    {"question": "Can I export my data?", "keywords": ["CSV"]},
]
ANSWERS = {
    "How do I reset my password?": "The reset link is valid for 60 minutes.",
    "What does the business plan cost?": "It costs $16 per user per month.",
    "Can I export my data?": "Yes, as CSV from Settings.",
}
# The runtime's answer when generation outlasts the deployment's timeout_s (admission.py).
TIMEOUT_BODY = {
    "error": {
        "message": "generation took longer than this deployment's timeout of 60 s; "
        "ask for fewer tokens or retry later",
        "type": "timeout_error",
        "param": None,
        "code": "timeout",
    }
}


class Deployment:
    """What the fake deployment saw: each question's tries (with times) and the ratings."""

    def __init__(self, fail_first: dict[str, int]) -> None:
        self.fail_first = fail_first  # question -> how many 504s before it answers
        self.tries: dict[str, list[float]] = {}
        self.ratings: dict[str, str] = {}
        self.lock = threading.Lock()


def handler(deployment: Deployment) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, payload: Any) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._send(200, {"object": "list", "data": [{"id": "support", "object": "model"}]})

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/v1/feedback":
                with deployment.lock:
                    deployment.ratings[request["id"]] = request["rating"]
                self._send(200, {"recorded": True})
                return
            question = request["messages"][0]["content"]
            with deployment.lock:
                tries = deployment.tries.setdefault(question, [])
                tries.append(time.monotonic())
                late = len(tries) <= deployment.fail_first.get(question, 0)
            if late:
                self._send(504, TIMEOUT_BODY)
                return
            self._send(
                200,
                {
                    "id": f"chatcmpl-{[c['question'] for c in CHECKS].index(question)}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "support",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": ANSWERS[question]},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
                },
            )

    return Handler


@pytest.fixture
def checks_file(tmp_path: Path) -> Path:
    path = tmp_path / "fact-checks.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in CHECKS))
    return path


@pytest.fixture
def slow_deployment() -> Iterator[tuple[Deployment, str]]:
    # The first question answers on its 2nd try, the second never does, the third at once.
    deployment = Deployment({CHECKS[0]["question"]: 1, CHECKS[1]["question"]: 99})
    with serve(handler(deployment)) as url:
        yield deployment, url


def run_check(checks: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, str(SCRIPT), str(checks), "--base-url", f"{url}/v1"),
            *("--api-key", "sk-test", "--model", "support", *extra),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": ""},
    )


def test_a_504_is_retried_and_a_question_that_never_answers_fails_alone(
    checks_file: Path, slow_deployment: tuple[Deployment, str]
) -> None:
    deployment, url = slow_deployment
    result = run_check(checks_file, url, "--retries", "2", "--backoff", "0.2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()

    # Retried once with the backoff between, then answered, passed and rated up.
    password = deployment.tries[CHECKS[0]["question"]]
    assert len(password) == 2 and password[1] - password[0] >= 0.2
    assert lines[0] == "pass  How do I reset my password?  [60 minutes]"
    assert lines[2] == "      (answered on try 2; before: timed out (HTTP 504))"
    assert deployment.ratings["chatcmpl-0"] == "up"

    # Never answered: 1 + 2 retries, the waits doubling (0.2 s, then 0.4 s), then reported.
    price = deployment.tries[CHECKS[1]["question"]]
    assert len(price) == 3
    assert price[1] - price[0] >= 0.2 and price[2] - price[1] >= 0.4
    assert lines[3] == "fail  What does the business plan cost?  [$16]"
    assert lines[4] == "      no answer: timed out (HTTP 504) after 3 tries"
    assert "chatcmpl-1" not in deployment.ratings

    # The check went on past it.
    assert lines[5] == "pass  Can I export my data?  [CSV]"
    assert len(deployment.tries[CHECKS[2]["question"]]) == 1
    assert lines[-1] == "facts: 2/3 answers contain the fact that matters; 1 got no answer"


def test_an_unanswered_question_counts_against_min(
    checks_file: Path, slow_deployment: tuple[Deployment, str]
) -> None:
    deployment, url = slow_deployment
    result = run_check(checks_file, url, "--retries", "0", "--min", "3")
    assert result.returncode == 1
    assert len(deployment.tries[CHECKS[1]["question"]]) == 1  # --retries 0: asked once
    assert "      no answer: timed out (HTTP 504) after 1 try" in result.stdout
    # The first question, also 504 on its only try, fails alone too.
    assert result.stdout.splitlines()[-1] == (
        "facts: 1/3 answers contain the fact that matters; 2 got no answer"
    )


def test_an_error_that_is_not_about_time_still_stops_the_check(checks_file: Path) -> None:
    # No deployment on this port: every question would fail alike, so it stops at once.
    with serve(handler(Deployment({}))) as url:
        pass
    result = run_check(checks_file, url, "--retries", "3", "--backoff", "5")
    assert result.returncode == 1
    assert result.stderr.startswith("error: Connection error")
