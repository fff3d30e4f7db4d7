"""`llmops eval served`: a suite run against what a local deployment serves, over its API,
scores as the same version does in process, and a deployment that is not applied, or whose
key is not set here, is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runners.deploy.local import free_port
from tests.apply_repo import committed_repo, stop_runtimes
from tests.conftest import PROJECT_ROOT
from tests.integration.test_apply import llmops

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
    source = PROJECT_ROOT / "data/evals"
    choice = (source / "support-faq-choice.jsonl").read_text().splitlines()[:12]
    answers = (source / "support-faq-eval.jsonl").read_text().splitlines()[:6]
    root = committed_repo(
        tmp_path / "repo",
        tiny_model,
        {
            "specs/evals/suite.yaml": SUITE,
            "specs/deployments/assistant.yaml": DEPLOYMENT.format(port=free_port()),
            "data/choice.jsonl": "\n".join(choice) + "\n",
            "data/eval.jsonl": "\n".join(answers) + "\n",
        },
        "a deployment and a suite",
    )
    yield root
    stop_runtimes(root)


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

    # Any OpenAI-compatible endpoint: the same server named by URL, model and key variable.
    lock = json.loads((repo / "llmops.lock").read_text())
    url = lock["resources"]["Deployment/assistant"]["outputs"]["endpoint"]
    by_url = llmops(
        repo, "eval", "served", "suite", "--endpoint", url, "--served-model", "assistant",
        "--tokenizer", "tiny", "--key-env", "LLMOPS_KEY_ASSISTANT", "--json",
    )  # fmt: skip
    assert by_url.returncode == 0, by_url.stderr + by_url.stdout
    endpoint_report = json.loads(by_url.stdout)
    assert endpoint_report["served"]["choice/accuracy"] == served["choice/accuracy"]
    assert endpoint_report["in_process"] is None
    half = llmops(repo, "eval", "served", "suite", "--endpoint", url)
    assert half.returncode == 2 and "--endpoint needs --served-model" in half.stderr

    # Without the key where the command runs, the endpoint refuses nothing silently: it says so.
    monkeypatch.delenv("LLMOPS_KEY_ASSISTANT")
    unkeyed = llmops(repo, "eval", "served", "suite", "--deployment", "assistant")
    assert unkeyed.returncode == 1
    assert "LLMOPS_KEY_ASSISTANT is not set here" in unkeyed.stderr
