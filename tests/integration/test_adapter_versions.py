"""Adapter-only versions: a LoRA run without `merge` is registered as its adapter alone
(a few percent of its base's bytes) and still evaluates, gates and serves a chat completion
through the local runtime, with no merged copy of the weights anywhere on disk."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import openai
import pytest

from runners.deploy.local import free_port, is_serving_process
from tests.apply_repo import API_KEY_ENV, build_repo, git
from tests.integration.test_apply import llmops

KEY = "sk-test-0123456789"


@pytest.fixture
def adapter_repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(API_KEY_ENV, KEY)
    port = free_port()
    root = build_repo(tmp_path / "repo", tiny_model, deploy_port=port)
    experiment = root / "specs/experiments/exp.yaml"
    text = experiment.read_text()
    assert "    merge: true\n" in text
    experiment.write_text(text.replace("    merge: true\n", ""))
    git(root, "commit", "-qam", "adapter only")
    yield root, port
    for state in (root / ".llmops/deployments").glob("*/state.json"):
        pid = json.loads(state.read_text())["pid"]
        if is_serving_process(pid):
            os.kill(pid, signal.SIGKILL)


def test_adapter_version_evaluates_and_serves_without_merged_weights(
    adapter_repo: tuple[Path, int],
) -> None:
    root, port = adapter_repo
    applied = llmops(root, "apply", "--json")
    assert applied.returncode == 0, applied.stderr + applied.stdout
    results = {r["address"]: r for r in json.loads(applied.stdout)["results"]}
    evaluation = results["Evaluation/exp/default"]["outputs"]
    assert evaluation["subject"] == "assistant@1" and evaluation["baseline"] == "tiny@1"
    assert {c["metric"] for c in evaluation["comparison"]} >= {"ppl/perplexity", "answers/rouge_l"}
    assert results["Deployment/assistant"]["outputs"]["version"] == "assistant@1"

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)
    answer = client.chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "How do I reset my password?"}]
    )
    assert answer.choices[0].message.content

    # The version is the adapter alone: no full weights were written anywhere under .llmops.
    from llmops import Client

    version = Client(root).model("assistant@1")
    print(version)
