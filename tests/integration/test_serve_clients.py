"""Named clients on the real runtime (127.0.0.1, the tiny model, the official client): each
key names its client, quotas hold per client with 429 + Retry-After while the others go on,
and usage per client (/metrics, `llmops usage --json`, collected rows) adds up to the `usage`
of the responses the clients got."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.serving import Runtime, config, running

NAME = "support-assistant"
KEYS = {"default": "sk-ops-0123456789", "web": "sk-web-0123456789", "batch": "sk-batch-0123456"}
ENV = {"K_OPS": KEYS["default"], "K_WEB": KEYS["web"], "K_BATCH": KEYS["batch"]}
WEB_RPM = 3
BATCH_TOKENS_PER_DAY = 120
USER = [{"role": "user", "content": "How do I reset my password?"}]


def api(runtime: Runtime, client: str) -> OpenAI:
    return OpenAI(base_url=f"{runtime.url}/v1", api_key=KEYS[client], max_retries=0)


class Ledger:
    """What each client got back: requests answered, and the `usage` their responses carry."""

    def __init__(self) -> None:
        self.totals: dict[str, Counter[str]] = defaultdict(Counter)
        self.ids: dict[str, str] = {}

    def chat(self, runtime: Runtime, client: str, max_tokens: int = 4) -> None:
        answer = api(runtime, client).chat.completions.create(
            model=NAME, messages=USER, max_tokens=max_tokens, temperature=0
        )
        assert answer.usage is not None
        self.add(client, answer.id, answer.usage.prompt_tokens, answer.usage.completion_tokens)

    def stream(self, runtime: Runtime, client: str) -> None:
        chunks = list(
            api(runtime, client).chat.completions.create(
                model=NAME,
                messages=USER,
                max_tokens=6,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        usage = chunks[-1].usage
        assert usage is not None
        self.add(client, chunks[0].id, usage.prompt_tokens, usage.completion_tokens)

    def add(self, client: str, id: str, prompt: int, completion: int) -> None:
        self.totals[client].update(
            {"requests": 1, "prompt_tokens": prompt, "completion_tokens": completion}
        )
        self.ids[id] = client

    def expected(self) -> dict[str, dict[str, int]]:
        return {
            name: {
                "requests": t["requests"],
                "prompt_tokens": t["prompt_tokens"],
                "completion_tokens": t["completion_tokens"],
                "total_tokens": t["prompt_tokens"] + t["completion_tokens"],
            }
            for name, t in sorted(self.totals.items())
        }


def refused(runtime: Runtime, client: str) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as caught:
        api(runtime, client).chat.completions.create(model=NAME, messages=USER, max_tokens=4)
    return caught.value


def client_metrics(runtime: Runtime) -> dict[str, dict[str, int]]:
    text = httpx.get(
        f"{runtime.url}/metrics", headers={"Authorization": f"Bearer {KEYS['web']}"}
    ).text
    names = {
        "llmops_serve_client_requests_total": "requests",
        "llmops_serve_client_prompt_tokens_total": "prompt_tokens",
        "llmops_serve_client_completion_tokens_total": "completion_tokens",
    }
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                out[sample.labels["client"]][names[sample.name]] = int(sample.value)
    return {
        name: {**values, "total_tokens": values["prompt_tokens"] + values["completion_tokens"]}
        for name, values in sorted(out.items())
    }


def serve_config(state: Path, collected: Path) -> dict[str, Any]:
    return config(
        NAME,
        None,
        state_dir=str(state / "deployments" / NAME),
        api_key_env="K_OPS",
        clients=[
            {"name": "web", "key_env": "K_WEB", "quotas": {"requests_per_minute": WEB_RPM}},
            {
                "name": "batch",
                "key_env": "K_BATCH",
                "quotas": {"tokens_per_day": BATCH_TOKENS_PER_DAY},
            },
        ],
        limits={"max_tokens": 16, "max_concurrency": 2, "max_queue": 8},
        collect={"enabled": True, "dir": str(collected), "seed": 0},
        smoke={"prompts": ["Hello"], "max_tokens": 4},
    )


def test_quotas_hold_per_client_and_usage_adds_up(
    tiny_model: Path, tmp_path: Path, run_cli: Any
) -> None:
    state, collected = tmp_path / "state", tmp_path / "collected"
    cfg = serve_config(state, collected)
    cfg["model_dir"] = str(tiny_model)
    ledger = Ledger()
    with running(cfg, tmp_path / "run", env=ENV) as runtime:
        # An unknown key is nobody: 401, and counted for no client.
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=f"{runtime.url}/v1", api_key="sk-nobody", max_retries=0).models.list()

        # web's requests per minute: the first WEB_RPM pass, then 429 with Retry-After, while
        # every request of the default client, in between, succeeds.
        rpm_refusals = []
        for attempt in range(WEB_RPM + 2):
            if attempt < WEB_RPM:
                ledger.chat(runtime, "web")
            else:
                rpm_refusals.append(refused(runtime, "web"))
            ledger.chat(runtime, "default")
        for error in rpm_refusals:
            retry = int(error.response.headers["retry-after"])
            assert 1 <= retry <= 60
            body = error.response.json()["error"]
            assert body["type"] == "rate_limit_error" and body["code"] == "rate_limit_exceeded"
            assert "client 'web'" in body["message"] and "requests per minute" in body["message"]
        ledger.stream(runtime, "default")

        # batch's tokens per day: answered while under the quota (the crossing one included),
        # then refused until midnight UTC; web's refusal and batch's leave default alone.
        spent = 0
        while spent < BATCH_TOKENS_PER_DAY:
            ledger.chat(runtime, "batch", max_tokens=8)
            spent = sum(ledger.totals["batch"][k] for k in ("prompt_tokens", "completion_tokens"))
            ledger.chat(runtime, "default")
        error = refused(runtime, "batch")
        assert 60 <= int(error.response.headers["retry-after"]) <= 24 * 3600
        assert "tokens per day" in error.response.json()["error"]["message"]
        ledger.stream(runtime, "default")

        expected = ledger.expected()
        assert set(expected) == {"default", "web", "batch"}
        assert expected["web"]["requests"] == WEB_RPM
        assert client_metrics(runtime) == expected

    # The runtime wrote a usage row per answered request; `llmops usage` adds them up.
    shown = run_cli(
        "usage", NAME, "--json", "--since", "1h", cwd=tmp_path, env={"LLMOPS_STATE_DIR": str(state)}
    )
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["clients"] == expected
    assert report["total"]["requests"] == sum(c["requests"] for c in expected.values())
    table = run_cli("usage", NAME, cwd=tmp_path, env={"LLMOPS_STATE_DIR": str(state)})
    assert table.returncode == 0 and "batch" in table.stdout and "(all)" in table.stdout
    unknown = run_cli(
        "usage", "nope", "--since", "yesterday", cwd=tmp_path, env={"LLMOPS_STATE_DIR": str(state)}
    )
    assert unknown.returncode == 2 and "--since" in unknown.stderr

    # Each collected interaction names the client whose key sent it.
    rows = [
        json.loads(line)
        for path in sorted(collected.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    interactions = {r["id"]: r["client"] for r in rows if r["type"] == "interaction"}
    assert interactions == {id: ledger.ids[id] for id in interactions}
    assert set(interactions.values()) == {"default", "web", "batch"}

    # A restarted runtime (a rollout) reads the day's tokens back: batch stays refused.
    with running(cfg, tmp_path / "again", env=ENV) as runtime:
        refused(runtime, "batch")
        api(runtime, "web").chat.completions.create(model=NAME, messages=USER, max_tokens=2)
