"""An EvalSuite that names an endpoint as its target: the project's serving runtime on
127.0.0.1, serving a scripted tiny model with its own key behind a proxy that answers 429
once, is evaluated at apply as `Evaluation/<suite>/<name>` of the plan. The 429 is retried
and counted, every request goes through the request cache (a re-evaluation after a suite
change asks nothing), the endpoint's identity, settings, latency and token usage are in the
lock file and the report, and its key is in no output or stored file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apply_repo import committed_repo, git
from tests.integration.test_apply import llmops
from tests.integration.test_arena_endpoint_contestant import CountingProxy
from tests.serving import config, running
from tests.tiny import make_scripted_model

KEY = "sk-suite-target-5d1a7f3e22"
REFERENCE = "Trial: 14 days."
QUESTIONS = [
    "How long is the Business trial?",
    "For how many days can we try Business for free?",
    "What is the length of the trial?",
    "How many trial days do we get?",
    "When does the Business trial end?",
]


def suite(url: str, metrics: str = "[exact_match, rouge_l]") -> str:
    return f"""
apiVersion: llmops/v1
kind: EvalSuite
metadata: {{name: facts}}
spec:
  tasks:
    - name: qa
      type: generate_until
      data: {{type: file, path: data/eval.jsonl}}
      metrics: {metrics}
      generation: {{max_new_tokens: 12}}
  endpoints:
    - endpoint:
        base_url: {url}
        model: knower
        api_key: {{env: LLMOPS_KEY_SERVED}}
        concurrency: 2
      name: api
"""


@pytest.fixture
def served(tmp_path: Path, tiny_model: Path) -> Iterator[CountingProxy]:
    """The runtime serving the scripted model as 'knower', keyed, behind the counting proxy."""
    folder = make_scripted_model(tiny_model, tmp_path / "knower", REFERENCE)
    cfg = config("knower", folder, api_key_env="LLMOPS_KEY_SERVED")
    with running(cfg, tmp_path / "runtime", env={"LLMOPS_KEY_SERVED": KEY}) as runtime:
        proxy = CountingProxy(runtime.url)
        try:
            yield proxy
        finally:
            proxy.server.shutdown()


def test_a_suite_evaluates_the_endpoint_it_names_and_a_rerun_asks_nothing(
    tmp_path: Path, tiny_model: Path, served: CountingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLMOPS_KEY_SERVED", KEY)
    rows = [{"id": f"q{i}", "question": q, "answer": REFERENCE} for i, q in enumerate(QUESTIONS)]
    root = committed_repo(
        tmp_path / "repo",
        tiny_model,
        {
            "specs/evals/facts.yaml": suite(served.url),
            "data/eval.jsonl": "".join(json.dumps(r) + "\n" for r in rows),
        },
        "a suite on an endpoint",
    )
    plan = llmops(root, "plan")
    assert plan.returncode == 3, plan.stderr + plan.stdout  # 3: changes to apply
    assert "Evaluation/facts/api" in plan.stdout and "new Evaluation" in plan.stdout

    applied = llmops(root, "apply")
    assert applied.returncode == 0, applied.stderr + applied.stdout
    # five prompts, one 429 retried; the suite's settings in every request, at concurrency 2
    assert len(served.bodies) == 6 and served.most_in_flight <= 2
    assert all(
        b["model"] == "knower" and b["max_tokens"] == 12 and b["temperature"] == 0
        for b in served.bodies
    )
    lock = json.loads((root / "llmops.lock").read_text())
    outputs = lock["resources"]["Evaluation/facts/api"]["outputs"]
    assert outputs["subject"] == "endpoint:api" and outputs["suite"] == "facts"
    assert outputs["metrics"]["qa/rouge_l"] == 1.0 and outputs["metrics"]["qa/exact_match"] == 1.0
    usage = outputs["endpoint"]
    assert (usage["requests"], usage["retries"], usage["answers"]) == (6, 1, 5)
    assert usage["endpoint"] == served.url and usage["model"] == "knower"
    assert usage["settings"]["concurrency"] == 2
    assert usage["settings"]["api_key_env"] == "LLMOPS_KEY_SERVED"
    assert usage["prompt_tokens"] and usage["completion_tokens"] >= 5
    assert 0 < usage["latency_s"] <= usage["latency_p95_s"]

    # Another metric: the plan re-evaluates the endpoint, which answers from the cache.
    (root / "specs/evals/facts.yaml").write_text(suite(served.url, "[exact_match, token_f1]"))
    git(root, "commit", "-qam", "token_f1 too")
    again = llmops(root, "apply")
    assert again.returncode == 0, again.stderr + again.stdout
    assert len(served.bodies) == 6
    lock = json.loads((root / "llmops.lock").read_text())
    outputs = lock["resources"]["Evaluation/facts/api"]["outputs"]
    assert outputs["metrics"]["qa/token_f1"] == 1.0
    assert "requests" not in outputs["endpoint"]  # 0 this run, left out at its default
    assert outputs["endpoint"]["answers"] == 5 and outputs["endpoint"]["completion_tokens"]

    report = llmops(root, "report", "--base", "main", "--output", str(tmp_path / "report.md"))
    assert report.returncode == 0, report.stderr + report.stdout
    shown = " ".join((tmp_path / "report.md").read_text().split())
    assert f"Endpoint api: model knower at {served.url}: 5 answer(s); latency" in shown

    outputs_text = plan.stdout + plan.stderr + applied.stdout + applied.stderr + again.stdout
    assert KEY not in outputs_text + report.stdout + report.stderr
    stored = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "endpoint-requests.sqlite" for p in stored)
    assert not [p for p in stored if KEY.encode() in p.read_bytes()]
