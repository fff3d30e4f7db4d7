"""An OpenAI-compatible endpoint as an arena contestant: the project's serving runtime on
127.0.0.1, serving a scripted tiny model with its own key behind a counting proxy that answers
429 once, battles a registry version. The 429 is retried and counted, answers are cached by
(endpoint, model, settings, prompt) so a rerun asks nothing, latency and token usage are
recorded, and the key is in no file under the repository or its state."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from controller.apply.arena import ArenaRunner
from controller.workspace import load, open_registry
from tests.servers import QuietHandler, start_in_background
from tests.serving import config, running
from tests.tiny import make_scripted_model, model_spec

KEY = "sk-contestant-7c2e91d04b"
REFERENCE = "Trial: 14 days."
QUESTIONS = [
    "How long is the Business trial?",
    "For how many days can we try Business for free?",
    "What is the length of the trial?",
    "How many trial days do we get?",
    "When does the Business trial end?",
    "Is the trial two weeks long?",
]


class CountingProxy:
    """Forwards POSTs to the runtime; answers 429 to the first one; counts them and the
    most requests in flight at once."""

    def __init__(self, upstream: str) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.in_flight = self.most_in_flight = 0
        lock = threading.Lock()
        proxy = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    proxy.bodies.append(json.loads(data))
                    first = len(proxy.bodies) == 1
                    proxy.in_flight += 1
                    proxy.most_in_flight = max(proxy.most_in_flight, proxy.in_flight)
                try:
                    if first:
                        return self.reply(429, b'{"error": "slow down"}', {"Retry-After": "0"})
                    forwarded = urllib.request.Request(
                        upstream + self.path,
                        data,
                        {
                            "Content-Type": "application/json",
                            "Authorization": self.headers.get("Authorization", ""),
                        },
                        method="POST",
                    )
                    try:
                        with urllib.request.urlopen(forwarded, timeout=120) as answer:
                            self.reply(answer.status, answer.read())
                    except urllib.error.HTTPError as err:
                        self.reply(err.code, err.read())
                finally:
                    with lock:
                        proxy.in_flight -= 1

            def reply(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server, self.url = start_in_background(Handler)


def arena(url: str, max_new_tokens: int = 16) -> str:
    return f"""
apiVersion: llmops/v1
kind: Arena
metadata: {{name: facts}}
spec:
  models:
    - tiny
    - endpoint:
        base_url: {url}
        model: knower
        api_key: {{env: LLMOPS_KEY_SERVED}}
        concurrency: 3
      name: served
  prompts: {{type: file, path: data/eval.jsonl, reference: answer}}
  battles_per_pair: 6
  generation: {{max_new_tokens: {max_new_tokens}}}
  judge: {{type: metric, metric: rouge_l}}
  bootstrap: {{rounds: 200, seed: 0}}
  gates: [{{candidate: served, baseline: tiny, margin: -400}}]
"""


@pytest.fixture
def served(tmp_path: Path, tiny_model: Path) -> Iterator[str]:
    """The runtime serving the scripted model as 'knower', keyed, behind the proxy."""
    folder = make_scripted_model(tiny_model, tmp_path / "knower", REFERENCE)
    cfg = config("knower", folder, api_key_env="LLMOPS_KEY_SERVED")
    with running(cfg, tmp_path / "runtime", env={"LLMOPS_KEY_SERVED": KEY}) as runtime:
        yield runtime.url


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path) -> Path:
    root = tmp_path / "repo"
    for folder in ("specs/models", "specs/arenas", "data", "models"):
        (root / folder).mkdir(parents=True)
    shutil.copytree(tiny_model, root / "models/tiny")
    (root / "specs/models/tiny.yaml").write_text(
        model_spec("tiny", {"type": "local", "path": "models/tiny"})
    )
    rows = [{"id": f"q{i}", "question": q, "answer": REFERENCE} for i, q in enumerate(QUESTIONS)]
    (root / "data/eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def run_arena(root: Path, spec: str) -> Any:
    (root / "specs/arenas/facts.yaml").write_text(spec)
    return ArenaRunner(load(root), open_registry(root), Console(quiet=True)).run("facts")


def test_a_served_endpoint_battles_a_registry_version_and_a_rerun_asks_nothing(
    repo: Path, served: str, monkeypatch: pytest.MonkeyPatch, run_cli: Any
) -> None:
    monkeypatch.setenv("LLMOPS_KEY_SERVED", KEY)
    proxy = CountingProxy(served)
    try:
        result = run_arena(repo, arena(proxy.url))
        assert len(result.battles) == 6 and result.generated == 12
        # the served model says the reference, the tiny random model does not: served wins
        assert [v.winner for b in result.battles for v in b.votes] == ["model_b"] * 6
        assert {b.model_a for b in result.battles} == {"tiny@1"}
        assert {b.model_b for b in result.battles} == {"served"}
        assert all(REFERENCE in (b.answer_b or "") for b in result.battles)
        # six prompts, one 429 retried; the arena's settings in every request
        assert len(proxy.bodies) == 7 and proxy.most_in_flight <= 3
        assert all(
            body["model"] == "knower"
            and body["max_tokens"] == 16
            and body["temperature"] == 0
            and body["seed"] == 0
            for body in proxy.bodies
        )
        usage = result.endpoints["served"]
        assert (usage.requests, usage.retries, usage.answers) == (7, 1, 6)
        assert usage.endpoint == proxy.url and usage.model == "knower"
        assert usage.settings["max_new_tokens"] == 16 and usage.settings["concurrency"] == 3
        assert usage.prompt_tokens and usage.completion_tokens and usage.completion_tokens >= 6
        assert usage.latency_s is not None and 0 < usage.latency_s <= usage.latency_p95_s
        assert result.gates["rating/served not_worse_than tiny"].passed
        assert result.outputs().models == {"tiny": "tiny@1", "served": "served"}

        # a rerun finds every answer and verdict: no request at all; usage still reported
        again = run_arena(repo, arena(proxy.url))
        assert again.generated == 0 and again.judged == 0 and len(proxy.bodies) == 7
        assert again.endpoints["served"].requests == 0
        assert again.endpoints["served"].answers == 6

        # other settings are other answers: asked again, and the tiny model answers again
        changed = run_arena(repo, arena(proxy.url, max_new_tokens=12))
        assert changed.generated == 12 and len(proxy.bodies) == 13
        assert {body["max_tokens"] for body in proxy.bodies[7:]} == {12}

        # the leaderboard shows the endpoint's identity and usage, never its key
        shown = run_cli("arena", "leaderboard", "facts", cwd=repo)
        assert shown.returncode == 0, shown.stderr
        assert f"Endpoint served: model knower at {proxy.url}" in " ".join(shown.stdout.split())
        record = json.loads(
            next(p for p in repo.rglob("leaderboard.json") if "facts" in str(p)).read_text()
        )
        assert record["endpoints"]["served"]["endpoint"] == proxy.url
        stored = [p for p in repo.rglob("*") if p.is_file()]
        assert any(p.name == "endpoint-usage.json" for p in stored)
        assert not [p for p in stored if KEY.encode() in p.read_bytes()]
        assert KEY not in shown.stdout + shown.stderr
    finally:
        proxy.server.shutdown()


def test_an_endpoint_contestant_without_its_key_set_is_a_clear_error(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runners.errors import InvalidInput

    monkeypatch.delenv("LLMOPS_KEY_SERVED", raising=False)
    with pytest.raises(InvalidInput, match="LLMOPS_KEY_SERVED is not set here"):
        run_arena(repo, arena("http://127.0.0.1:9/v1"))
