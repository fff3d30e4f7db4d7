"""`llmops apply` with a Deployment that lists clients, on target local: the runtime it starts
knows each client by its key (read from the client's LLMOPS_KEY_* variable where apply runs,
handed over under llmops' own variable), holds their quotas, and `llmops usage` shows what
each used."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from runners.deploy.local import free_port
from tests.apply_repo import committed_repo, stop_runtimes
from tests.integration.test_apply import llmops

KEYS = {"LLMOPS_KEY_WEB": "sk-web-0123456789", "LLMOPS_KEY_BATCH": "sk-batch-0123456789"}
DEPLOYMENT = """
apiVersion: llmops/v1
kind: Deployment
metadata: {{name: assistant}}
spec:
  model: tiny
  target: local
  port: {port}
  limits: {{max_tokens: 8, max_concurrency: 2}}
  clients:
    - name: web
      api_key: {{env: LLMOPS_KEY_WEB}}
      quotas: {{requests_per_minute: 3}}
    - name: batch
      api_key: {{env: LLMOPS_KEY_BATCH}}
"""
USER = [{"role": "user", "content": "How do I reset my password?"}]


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    port = free_port()
    root = committed_repo(
        tmp_path / "repo",
        tiny_model,
        {"specs/deployments/assistant.yaml": DEPLOYMENT.format(port=port)},
        "tiny repository with clients",
    )
    yield root, port
    stop_runtimes(root)


def test_apply_serves_each_client_with_its_key_quota_and_usage(
    repo: tuple[Path, int],
) -> None:
    root, port = repo
    applied = llmops(root, "apply", "--json")
    assert applied.returncode == 0, applied.stderr + applied.stdout

    def api(variable: str) -> openai.OpenAI:
        key = KEYS.get(variable, variable)
        return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)

    state = json.loads((root / ".llmops/deployments/assistant/state.json").read_text())
    env = environ_of(state["pid"])
    # The runtime gets each key under llmops' own variable, never the apply environment's.
    assert env["LLMOPS_CLIENT_KEY_WEB"] == KEYS["LLMOPS_KEY_WEB"]
    assert env["LLMOPS_CLIENT_KEY_BATCH"] == KEYS["LLMOPS_KEY_BATCH"]
    assert not any(name.startswith("LLMOPS_KEY_") for name in env)
    # Its config names the variables and quotas, never a key.
    config = json.loads(Path(state["config_path"]).read_text())
    assert [(c["name"], c["key_env"]) for c in config["clients"]] == [
        ("web", "LLMOPS_CLIENT_KEY_WEB"),
        ("batch", "LLMOPS_CLIENT_KEY_BATCH"),
    ]
    assert config["clients"][0]["quotas"]["requests_per_minute"] == 3
    assert not any(key in Path(state["config_path"]).read_text() for key in KEYS.values())

    with pytest.raises(openai.AuthenticationError):
        api("sk-nobody").models.list()
    # The rollout's own checks (on the new port, then the public one) spent two of web's
    # requests (the first client's key, as the spec has no single api_key), unless their
    # minute has passed: one or more pass, then web is refused while batch goes on.
    answered = {"web": 0, "batch": 0}
    refusal = None
    for _ in range(4):
        try:
            api("LLMOPS_KEY_WEB").chat.completions.create(model="assistant", messages=USER)
            answered["web"] += 1
        except openai.RateLimitError as err:
            refusal = err
            break
    assert refusal is not None and 1 <= answered["web"] <= 3
    assert int(refusal.response.headers["retry-after"]) >= 1
    for _ in range(4):
        api("LLMOPS_KEY_BATCH").chat.completions.create(model="assistant", messages=USER)
        answered["batch"] += 1

    usage = llmops(root, "usage", "assistant", "--json")
    assert usage.returncode == 0, usage.stderr
    clients = json.loads(usage.stdout)["clients"]
    assert clients["web"]["requests"] == answered["web"] + 2  # + the rollout's checks
    assert clients["batch"]["requests"] == answered["batch"]
    assert clients["batch"]["completion_tokens"] >= 1
