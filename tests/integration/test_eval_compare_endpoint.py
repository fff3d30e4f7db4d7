"""Endpoints as baselines and contestants, on one applied local deployment serving the tiny
model with a key: `llmops eval compare` of the registered version against the same model
served gives differences of ~0 on a deterministic suite (either side the endpoint), and an
Arena names the Deployment as a contestant: apply battles it over its API, a rerun asks
nothing, and the key is in no file of the repository or its state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runners.deploy.local import free_port
from tests.apply_repo import committed_repo, stop_runtimes
from tests.conftest import PROJECT_ROOT
from tests.integration.test_apply import llmops

KEY = "sk-baseline-93ab1f7c55"
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
  bootstrap: {samples: 200, seed: 0}
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
ARENA = """
apiVersion: llmops/v1
kind: Arena
metadata: {name: duel}
spec:
  models: [tiny, {deployment: assistant, name: served-tiny, concurrency: 2}]
  prompts: {type: file, path: data/eval.jsonl, reference: answer}
  battles_per_pair: 4
  generation: {max_new_tokens: 8}
  judge: {type: metric, metric: rouge_l}
  bootstrap: {rounds: 100, seed: 0}
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
            "specs/arenas/duel.yaml": ARENA,
            "data/choice.jsonl": "\n".join(choice) + "\n",
            "data/eval.jsonl": "\n".join(answers) + "\n",
        },
        "a deployment, a suite and an arena against it",
    )
    yield root
    stop_runtimes(root)


def test_a_version_compares_with_itself_served_and_battles_its_deployment(repo: Path) -> None:
    applied = llmops(repo, "apply")
    assert applied.returncode == 0, applied.stderr + applied.stdout
    lock = json.loads((repo / "llmops.lock").read_text())
    url = lock["resources"]["Deployment/assistant"]["outputs"]["endpoint"]

    # the arena battled the deployment over its API: identity, settings and usage recorded
    duel = lock["resources"]["Arena/duel"]["outputs"]
    assert duel["battles"] == 4 and duel["models"]["served-tiny"] == "served-tiny"
    usage = duel["endpoints"]["served-tiny"]
    assert usage["endpoint"] == url and usage["model"] == "assistant"
    assert usage["settings"]["serves"] == "tiny@1" and usage["settings"]["concurrency"] == 2
    assert usage["answers"] == 4 and usage["requests"] == 4 and usage["completion_tokens"] > 0
    rerun = llmops(repo, "arena", "run", "duel", "--json")
    assert rerun.returncode == 0, rerun.stderr + rerun.stdout
    again = json.loads(rerun.stdout)
    assert again["battles"] == 4 and again["endpoints"]["served-tiny"]["requests"] == 0
    assert again["endpoints"]["served-tiny"]["answers"] == 4

    # the registered version against the same model served: the same numbers, sample by sample
    endpoint = ["--endpoint", url, "--served-model", "assistant", "--tokenizer", "tiny"]
    endpoint += ["--key-env", "LLMOPS_KEY_ASSISTANT"]
    for side in (["--candidate", "tiny"], ["--baseline", "tiny"]):
        compared = llmops(repo, "eval", "compare", "--suite", "suite", *side, *endpoint, "--json")
        assert compared.returncode == 0, compared.stderr + compared.stdout
        report = json.loads(compared.stdout)
        served_label = f"assistant at {url}"
        assert served_label in (report["candidate"], report["baseline"])
        assert "tiny@1" in (report["candidate"], report["baseline"])
        metrics = {m["metric"]: m for m in report["metrics"]}
        assert metrics["choice/accuracy"]["difference"] == 0
        ppl = metrics["ppl/perplexity"]
        assert abs(ppl["difference"]) <= 1e-4 * ppl["baseline"]
        assert ppl["low"] <= 0 <= ppl["high"] or abs(ppl["high"] - ppl["low"]) < 1e-3

    both = llmops(repo, "eval", "compare", "--suite", "suite", "--candidate", "tiny",
                  "--baseline", "tiny", *endpoint)  # fmt: skip
    assert both.returncode == 2 and "--endpoint takes the place of" in both.stderr
    half = llmops(repo, "eval", "compare", "--suite", "suite", "--endpoint", url)
    assert half.returncode == 2 and "--endpoint needs --served-model" in half.stderr

    # the key is in no file of the repository, its lock or its state
    stored = [p for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts]
    assert not [p for p in stored if KEY.encode() in p.read_bytes()]
