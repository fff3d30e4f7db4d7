"""`llmops eval served`: a suite run against what a local deployment serves, over its API,
scores as the same version does in process, and a deployment that is not applied, or whose
key is not set here, is a clear error."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from runners.deploy.local import free_port, is_serving_process
from tests.apply_repo import git
from tests.conftest import PROJECT_ROOT
from tests.integration.test_apply import llmops
from tests.tiny import model_spec

KEY = "sk-served-0123456789"
SUITE = """
apiVersion: llmops/v1
kind: EvalSuite
metadata: {name: suite}
spec:
  tasks:
    - name: choice
      type: multiple_choice
      data: {type: file, path: data/choice.jsonl}
      target: label
      metrics: [accuracy]
    - name: ppl
      type: loglikelihood_rolling
      data: {type: file, path: data/eval.jsonl}
      prompt: "{question} {answer}"
      metrics: [perplexity]
"""
DEPLOYMENT = """
apiVersion: llmops/v1
kind: Deployment
metadata: {{name: assistant}}
spec:
  model: tiny
  target: local
  port: {port}
  api_key: {{env: LLMOPS_KEY_ASSISTANT}}
  limits: {{max_tokens: 8, max_concurrency: 4}}
"""


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLMOPS_KEY_ASSISTANT", KEY)
    root = tmp_path / "repo"
    for folder in ("specs/models", "specs/evals", "specs/deployments", "data"):
        (root / folder).mkdir(parents=True)
    shutil.copytree(tiny_model, root / "models/tiny")
    (root / "specs/models/tiny.yaml").write_text(
        model_spec("tiny", {"type": "local", "path": "models/tiny"})
    )
    (root / "specs/evals/suite.yaml").write_text(SUITE)
    (root / "specs/deployments/assistant.yaml").write_text(DEPLOYMENT.format(port=free_port()))
    rows = (PROJECT_ROOT / "data/evals/support-faq-choice.jsonl").read_text().splitlines()[:12]
    (root / "data/choice.jsonl").write_text("\n".join(rows) + "\n")
    rows = (PROJECT_ROOT / "data/evals/support-faq-eval.jsonl").read_text().splitlines()[:6]
    (root / "data/eval.jsonl").write_text("\n".join(rows) + "\n")
    (root / ".gitignore").write_text(".llmops/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "a deployment and a suite")
    yield root
    for state in (root / ".llmops/deployments").glob("*/state.json"):
        pid = json.loads(state.read_text())["pid"]
        if is_serving_process(pid):
            os.kill(pid, signal.SIGKILL)


def test_the_served_deployment_scores_as_its_version_in_process(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = llmops(repo, "eval", "served", "suite", "--deployment", "assistant")
    assert before.returncode == 1
    assert "has no endpoint in llmops.lock; apply it first" in before.stderr
    applied = llmops(repo, "apply")
    assert applied.returncode == 0, applied.stderr + applied.stdout

    result = llmops(repo, "eval", "served", "suite", "--deployment", "assistant", "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads(result.stdout)
    assert report["model"] == "tiny@1"
    served, local = report["served"], report["in_process"]
    assert served["choice/accuracy"] == local["choice/accuracy"]
    assert served["ppl/perplexity"] == pytest.approx(local["ppl/perplexity"], rel=1e-4)
    samples = Path(report["results"])
    assert (samples / "results.json").is_file()

    # Without the key where the command runs, the endpoint refuses nothing silently: it says so.
    monkeypatch.delenv("LLMOPS_KEY_ASSISTANT")
    unkeyed = llmops(repo, "eval", "served", "suite", "--deployment", "assistant")
    assert unkeyed.returncode == 1
    assert "LLMOPS_KEY_ASSISTANT is not set here" in unkeyed.stderr
