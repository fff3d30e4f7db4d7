"""Apply deploys locally: the served model answers the official openai client; a retrain
moves the alias and rolls out without a failed request; a dead process is drift that the
next apply heals; removing the spec stops it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from runners.deploy.local import free_port, is_serving_process
from tests.apply_repo import API_KEY_ENV, build_repo, git
from tests.integration.test_apply import llmops
from tests.serving import steady_traffic

KEY = "sk-test-0123456789"


@pytest.fixture
def deployed(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(API_KEY_ENV, KEY)
    port = free_port()
    root = build_repo(tmp_path / "repo", tiny_model, deploy_port=port)
    yield root, port
    # Never leave a server behind, whatever the test did.
    for state in (root / ".llmops/deployments").glob("*/state.json"):
        pid = json.loads(state.read_text())["pid"]
        if is_serving_process(pid):
            os.kill(pid, signal.SIGKILL)


def live(root: Path) -> dict:
    status = json.loads(llmops(root, "status", "--json").stdout)
    return next(r for r in status["resources"] if r["address"] == "Deployment/assistant")


def test_apply_deploys_rolls_out_heals_and_stops(deployed: tuple[Path, int]) -> None:
    root, port = deployed
    first = llmops(root, "apply", "--json")
    assert first.returncode == 0, first.stderr
    outputs = {r["address"]: r for r in json.loads(first.stdout)["results"]}
    assert outputs["Deployment/assistant"]["outputs"] == {
        "version": "assistant@1",
        "target": "local",
        "endpoint": f"http://127.0.0.1:{port}/v1",
    }
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)
    answer = client.chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "How do I reset my password?"}]
    )
    assert answer.choices[0].message.content
    # The Python client sees the same: the model, its evaluation, the deployment.
    from llmops import Client

    llm = Client(root)
    champion = llm.model("assistant@champion")
    assert champion.ref == "assistant@1" and champion.aliases == ("champion",)
    assert champion.lineage["experiment_run"] == "exp/default"
    assert "smoke" in champion.metrics and "ppl/perplexity" in champion.metrics["smoke"]
    (evaluation,) = [e for e in llm.evaluations() if e.address == "Evaluation/exp/default"]
    assert evaluation.passed and evaluation.baseline == "tiny@1"
    deployment = llm.deployment("assistant")
    assert deployment.running and deployment.version == "assistant@1"
    listed = deployment.openai().models.list()
    assert [m.id for m in listed.data] == ["assistant"]

    row = live(root)
    assert row["state"] == "applied"
    assert row["live"]["ready"] and row["live"]["version"] == "assistant@1"
    assert llmops(root, "drift").returncode == 0
    old_pid = row["live"]["pid"]

    # Retrain: the alias moves to assistant@2 and the deployment follows, with no failed request.
    spec = root / "specs/experiments/exp.yaml"
    spec.write_text(spec.read_text().replace("learning_rate: 1.0e-3", "learning_rate: 2.0e-3"))
    git(root, "commit", "-qam", "retrain")
    with steady_traffic(port, KEY, "assistant") as traffic:
        second = llmops(root, "apply", "--json")
    assert second.returncode == 0, second.stderr
    results = {r["address"]: r for r in json.loads(second.stdout)["results"]}
    assert results["Model/assistant"]["outputs"]["version"] == "assistant@2"
    assert results["Deployment/assistant"]["outputs"]["version"] == "assistant@2"
    assert traffic.failures == [] and traffic.answered > 0
    row = live(root)
    assert row["live"]["version"] == "assistant@2" and row["live"]["pid"] != old_pid
    assert not is_serving_process(old_pid)

    # The process dies: drift, a plan that redeploys, an apply that heals it.
    os.kill(row["live"]["pid"], signal.SIGKILL)
    time.sleep(0.5)
    drift = llmops(root, "drift", "--json")
    assert drift.returncode == 3
    assert json.loads(drift.stdout)["drift"][0]["actual"] == "not running"
    plan = json.loads(llmops(root, "plan", "--json").stdout)
    action = next(a for a in plan["actions"] if a["address"] == "Deployment/assistant")
    assert action["action"] == "deploy" and "not running" in action["reason"]
    assert llmops(root, "apply").returncode == 0
    assert live(root)["live"]["ready"]
    assert llmops(root, "drift").returncode == 0

    # The spec goes: apply stops the server and forgets it.
    pid = live(root)["live"]["pid"]
    (root / "specs/deployments/assistant.yaml").unlink()
    git(root, "commit", "-qam", "retire the deployment")
    removed = llmops(root, "apply")
    assert removed.returncode == 0, removed.stderr
    assert not is_serving_process(pid)
    assert "Deployment/assistant" not in json.loads((root / "llmops.lock").read_text())["resources"]


def test_missing_api_key_is_a_clear_failure(deployed: tuple[Path, int]) -> None:
    root, _ = deployed
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "apply", "--json"],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 1
    failed = {r["address"]: r for r in json.loads(result.stdout)["results"]}["Deployment/assistant"]
    assert failed["status"] == "failed"
    assert f"{API_KEY_ENV}, which is not set" in failed["message"]
