"""Evaluation on tiny real models through lm-eval: agreement, comparisons, gates, bless."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from controller.apply.evaluate import Evaluator
from controller.load.desired import load_desired
from controller.workspace import open_registry
from tests.conftest import PROJECT_ROOT
from tests.tiny import model_spec

SUITE = """
apiVersion: llmops/v1
kind: EvalSuite
metadata: {name: suite}
spec:
  tasks:
    - name: answers
      type: generate_until
      data: {type: file, path: data/eval.jsonl}
      metrics: [exact_match, token_f1, rouge_l, keyword_recall, latency]
      generation: {max_new_tokens: 8}
    - name: ppl
      type: loglikelihood_rolling
      data: {type: file, path: data/eval.jsonl}
      prompt: "{question} {answer}"
      metrics: [perplexity, word_perplexity]
    - name: choice
      type: multiple_choice
      data: {type: file, path: data/choice.jsonl}
      target: label
      metrics: [accuracy]
  gates:
    - {metric: ppl/perplexity, max_drop: 0.5}
    - {metric: choice/accuracy, non_inferiority_margin: 0.5}
  bootstrap: {samples: 200}
"""


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    monkeypatch.delenv("LLMOPS_REGISTRY_URL", raising=False)
    monkeypatch.delenv("LLMOPS_STATE_DIR", raising=False)
    root = tmp_path / "repo"
    (root / "specs/models").mkdir(parents=True)
    (root / "specs/evals").mkdir(parents=True)
    (root / "data").mkdir()
    shutil.copytree(tiny_model, root / "models/tiny")
    shutil.copytree(tiny_model, root / "models/broken")
    damaged = AutoModelForCausalLM.from_pretrained(root / "models/broken")
    with torch.no_grad():
        for param in damaged.parameters():
            param.mul_(4.0)  # a deliberately damaged copy: far worse likelihoods
    damaged.save_pretrained(root / "models/broken", safe_serialization=True)
    for name in ("tiny", "twin", "broken"):
        folder = "broken" if name == "broken" else "tiny"
        (root / f"specs/models/{name}.yaml").write_text(
            model_spec(name, {"type": "local", "path": f"models/{folder}"})
        )
    (root / "specs/evals/suite.yaml").write_text(SUITE)
    rows = (PROJECT_ROOT / "data/evals/support-faq-eval.jsonl").read_text().splitlines()[:8]
    (root / "data/eval.jsonl").write_text("\n".join(rows) + "\n")
    rows = (PROJECT_ROOT / "data/evals/support-faq-choice.jsonl").read_text().splitlines()[:12]
    (root / "data/choice.jsonl").write_text("\n".join(rows) + "\n")
    return root


def evaluator(root: Path) -> Evaluator:
    loaded = load_desired(root)
    assert loaded.ok, [d.render() for d in loaded.diagnostics]
    return Evaluator(loaded, open_registry(root), Console(quiet=True))


def test_llmops_agrees_with_a_direct_lm_eval_call(repo: Path, tmp_path: Path) -> None:
    """The same model and data through lm-eval's own API, with a task file written by hand."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    outcome = evaluator(repo).run("suite", "tiny")
    ours = outcome.summary["metrics"]
    tasks = tmp_path / "direct"
    tasks.mkdir()
    (tasks / "direct_ppl.yaml").write_text(f"""
task: direct_ppl
dataset_path: json
dataset_kwargs: {{data_files: {{test: {repo / "data/eval.jsonl"}}}}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{question}}}} {{{{answer}}}}"
metric_list: [{{metric: word_perplexity}}]
""")
    (tasks / "direct_choice.yaml").write_text(f"""
task: direct_choice
dataset_path: json
dataset_kwargs: {{data_files: {{test: {repo / "data/choice.jsonl"}}}}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list: [{{metric: acc}}]
""")
    direct = simple_evaluate(
        model="hf",
        model_args=f"pretrained={repo / 'models/tiny'},dtype=float32",
        tasks=["direct_ppl", "direct_choice"],
        task_manager=TaskManager(include_path=str(tasks)),
        device="cpu",
        batch_size=8,
        bootstrap_iters=0,
    )["results"]
    assert ours["ppl/word_perplexity"] == pytest.approx(
        direct["direct_ppl"]["word_perplexity,none"], rel=1e-6
    )
    assert ours["choice/accuracy"] == pytest.approx(direct["direct_choice"]["acc,none"])
    samples = [
        json.loads(line)
        for line in (outcome.folder / "samples-answers.jsonl").read_text().splitlines()
    ]
    assert len(samples) == 8 and all("output" in s for s in samples)
    assert ours["answers/latency"] > 0


def test_identical_models_differ_by_zero(repo: Path) -> None:
    comparison = evaluator(repo).compare("suite", "tiny", "twin")
    assert comparison.metrics
    for metric in comparison.metrics:
        if metric.metric.endswith("/latency"):
            continue  # wall time, not a property of the model
        assert metric.difference == pytest.approx(0.0, abs=1e-9), metric.metric
        assert metric.low <= 0 <= metric.high
    assert comparison.passed


def test_damaged_model_fails_the_gate(repo: Path, run_cli: Callable[..., Any]) -> None:
    result = run_cli(
        "eval",
        "compare",
        "--baseline",
        "tiny",
        "--candidate",
        "broken",
        "--suite",
        "suite",
        cwd=repo,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failing gate(s): ppl/perplexity max_drop 0.5" in result.stderr
    assert "FAIL" in result.stdout
    payload = json.loads(
        run_cli(
            "eval",
            "compare",
            "--baseline",
            "tiny",
            "--candidate",
            "broken",
            "--suite",
            "suite",
            "--json",
            cwd=repo,
        ).stdout
    )
    ppl = next(m for m in payload["metrics"] if m["metric"] == "ppl/perplexity")
    assert ppl["candidate"] > ppl["baseline"] and ppl["low"] > 0


def test_bless_then_gates_compare_with_the_approved_baseline(
    repo: Path, run_cli: Callable[..., Any]
) -> None:
    blessed = run_cli("bless", "suite", "tiny", cwd=repo)
    assert blessed.returncode == 0, blessed.stderr
    baseline = json.loads((repo / "evals/baselines/suite.json").read_text())
    assert baseline["model"] == "tiny@1" and "ppl/perplexity" in baseline["samples"]
    assert baseline["tolerances"][0]["metric"] == "ppl/perplexity"
    same = run_cli("eval", "run", "suite", "--model", "twin", cwd=repo)
    assert same.returncode == 0, same.stdout + same.stderr
    worse = run_cli("eval", "run", "suite", "--model", "broken", "--json", cwd=repo)
    assert worse.returncode == 1
    gates = json.loads(worse.stdout)["comparison"]["gates"]
    assert any(g["metric"] == "ppl/perplexity" and not g["passed"] for g in gates)


def test_results_are_reused_and_recorded_in_the_registry(repo: Path) -> None:
    first = evaluator(repo).run("suite", "tiny")
    again = evaluator(repo).run("suite", "tiny")
    assert (first.status, again.status) == ("evaluated", "cached")
    version = open_registry(repo).find("tiny")
    names = {m.name for m in version.metrics if m.suite == "suite"}
    assert {"ppl/perplexity", "choice/accuracy", "answers/rouge_l"} <= names


def test_plan_sees_evaluations_in_the_registry(repo: Path) -> None:
    from controller.workspace import make_plan

    (repo / "specs/datasets").mkdir()
    (repo / "data/faq.jsonl").write_text((PROJECT_ROOT / "data/support-faq/faq.jsonl").read_text())
    (repo / "specs/datasets/faq.yaml").write_text(
        "apiVersion: llmops/v1\nkind: Dataset\nmetadata: {name: faq}\nspec:\n"
        "  format: instruction\n  sources: [{type: file, path: data/faq.jsonl, "
        "mapping: {prompt: question, response: answer}}]\n  on_bad_rows: skip\n"
    )
    (repo / "specs/experiments").mkdir()
    (repo / "specs/experiments/exp.yaml").write_text(
        "apiVersion: llmops/v1\nkind: Experiment\nmetadata: {name: exp}\nspec:\n"
        "  base_model: tiny\n  dataset: faq\n  eval_suite: suite\n"
    )
    _, before = make_plan(repo)
    control = next(a for a in before.actions if a.address == "Evaluation/exp/control")
    assert control.kind.value == "create"
    evaluator(repo).run("suite", "tiny")
    _, after = make_plan(repo)
    control = next(a for a in after.actions if a.address == "Evaluation/exp/control")
    assert control.kind.value == "noop"


def test_judge_and_loglikelihood_tasks(repo: Path) -> None:
    (repo / "specs/evals/judged.yaml").write_text("""
apiVersion: llmops/v1
kind: EvalSuite
metadata: {name: judged}
spec:
  tasks:
    - name: graded
      type: generate_until
      data: {type: file, path: data/eval.jsonl}
      metrics: [judge, exact_match]
      generation: {max_new_tokens: 4}
      limit: 3
    - name: loglik
      type: loglikelihood
      data: {type: file, path: data/eval.jsonl}
      metrics: [perplexity, accuracy]
      limit: 4
  judge: {model: twin, rubric: "Is the answer correct and polite?"}
""")
    outcome = evaluator(repo).run("judged", "tiny")
    rows = [
        json.loads(line)
        for line in (outcome.folder / "samples-graded.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 3
    assert all(isinstance(r["judge_output"], str) for r in rows)  # the judge's raw text kept
    assert all("judge" in r["metrics"] for r in rows)
    unparsed = outcome.summary["tasks"]["graded"]["judge_unparsed"]
    parsed = [r["metrics"]["judge"][0] for r in rows if r["metrics"]["judge"][1]]
    assert unparsed + len(parsed) == 3  # a random tiny judge rarely writes a score
    judged = outcome.summary["metrics"]["graded/judge"]
    assert judged is None or 1 <= judged <= 5
    metrics = outcome.summary["metrics"]
    assert metrics["loglik/perplexity"] > 1.0
    assert 0.0 <= metrics["loglik/accuracy"] <= 1.0
