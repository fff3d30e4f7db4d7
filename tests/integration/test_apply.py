"""`llmops apply` on a tiny repository: everything runs once, then nothing; one change reruns
only what depends on it; the lock file records digests and results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.state.lockfile import read_lock
from tests.apply_repo import build_repo, git
from tests.tiny import make_noisy_model, model_spec


def llmops(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli.main", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        monkeypatch.delenv(name, raising=False)
    return build_repo(tmp_path / "repo", tiny_model)


def trained_runs(root: Path) -> list[Path]:
    return sorted((root / ".llmops").glob("runs/**/result.json"))


def test_apply_twice_second_runs_nothing_and_plan_is_noop(repo: Path) -> None:
    first = llmops(repo, "apply", "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    applied = {r["address"]: r for r in report["results"]}
    assert applied["Experiment/exp/default"]["status"] == "applied"
    assert applied["Experiment/exp/default"]["outputs"]["version"] == "assistant@1"
    assert applied["Model/assistant"]["outputs"] == {
        "version": "assistant@1",
        "aliases": ["champion"],
    }
    evaluation = applied["Evaluation/exp/default"]["outputs"]
    assert evaluation["baseline"] == "tiny@1" and evaluation["subject"] == "assistant@1"
    (gate,) = evaluation["gates"].items()
    assert gate[0] == "ppl/perplexity max_drop 1" and gate[1]["passed"] is True, gate
    assert {c["metric"] for c in evaluation["comparison"]} >= {"ppl/perplexity", "answers/rouge_l"}

    lock = read_lock(repo / "llmops.lock").as_json()["resources"]
    assert set(lock) == set(applied)
    assert lock["Dataset/faq"]["outputs"]["rows"]["train"] > 0
    runs_before = trained_runs(repo)
    mtimes = {p: p.stat().st_mtime_ns for p in runs_before}

    second = llmops(repo, "apply", "--json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["results"] == []
    assert {p: p.stat().st_mtime_ns for p in trained_runs(repo)} == mtimes
    assert read_lock(repo / "llmops.lock").as_json()["resources"] == lock

    plan = llmops(repo, "plan", "--json")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert {a["action"] for a in json.loads(plan.stdout)["actions"]} <= {"noop"}


def test_a_branch_records_a_promotion_already_made_and_leaves_one_that_would_move(
    repo: Path,
) -> None:
    """What a pipeline's branch applies (skip_promote): a Model whose aliases already point at
    its run's version is recorded, so what builds on `assistant@champion` can be too (the
    demo's DPO stage, when main's lock is not committed); one that would move an alias is
    left for after the merge, and nothing moves."""
    from rich.console import Console

    from controller.apply.hooks import ConsoleHooks
    from controller.workspace import load, open_registry, plan_and_apply

    assert llmops(repo, "apply").returncode == 0
    runs = {p: p.stat().st_mtime_ns for p in trained_runs(repo)}
    (repo / "llmops.lock").unlink()  # the lock main has not committed
    hooks = ConsoleHooks(Console(quiet=True))
    registry = open_registry(repo)
    report = plan_and_apply(load(repo), registry, hooks, skip_deploy=True, skip_promote=True)
    results = {str(r.address): r for r in report.results}
    assert results["Model/assistant"].status == "applied", results["Model/assistant"]
    assert results["Model/assistant"].outputs == {"version": "assistant@1", "aliases": ["champion"]}
    assert {p: p.stat().st_mtime_ns for p in trained_runs(repo)} == runs  # nothing retrained

    spec = repo / "specs/models/assistant.yaml"
    spec.write_text(spec.read_text().replace("aliases: [champion]", "aliases: [champion, staging]"))
    report = plan_and_apply(load(repo), registry, hooks, skip_deploy=True, skip_promote=True)
    (model,) = [r for r in report.results if str(r.address) == "Model/assistant"]
    assert model.status == "skipped" and "after the merge" in model.message, model
    assert registry.find("assistant@staging") is None
    champion = registry.find("assistant@champion")
    assert champion is not None and champion.number == 1


def test_one_hyperparameter_reruns_only_that_experiment_and_dependents(repo: Path) -> None:
    assert llmops(repo, "apply").returncode == 0
    spec = repo / "specs/experiments/exp.yaml"
    spec.write_text(spec.read_text().replace("learning_rate: 1.0e-3", "learning_rate: 2.0e-3"))
    git(repo, "commit", "-qam", "higher learning rate")
    result = llmops(repo, "apply", "--json")
    assert result.returncode == 0, result.stderr
    touched = {r["address"] for r in json.loads(result.stdout)["results"]}
    assert touched == {"Experiment/exp/default", "Evaluation/exp/default", "Model/assistant"}
    lock = read_lock(repo / "llmops.lock").as_json()["resources"]
    assert lock["Model/assistant"]["outputs"]["version"] == "assistant@2"
    assert lock["Experiment/exp/default"]["spec"]["training"]["learning_rate"] == 2.0e-3


def test_failed_gate_blocks_promotion_and_exits_1(repo: Path) -> None:
    suite = repo / "specs/evals/smoke.yaml"
    suite.write_text(suite.read_text().replace("max_drop: 1.0", "max: 1.0"))
    result = llmops(repo, "apply", "--json")
    assert result.returncode == 1
    results = {r["address"]: r for r in json.loads(result.stdout)["results"]}
    gates = results["Evaluation/exp/default"]["outputs"]["gates"]
    assert {name: g["passed"] for name, g in gates.items()} == {"ppl/perplexity max 1": False}
    assert results["Model/assistant"]["status"] == "failed"
    assert "failed gate(s) ppl/perplexity max 1" in results["Model/assistant"]["message"]
    assert "Model/assistant" not in read_lock(repo / "llmops.lock").as_json()["resources"]


def test_broken_base_model_fails_the_gates_and_keeps_the_champion(
    repo: Path, tiny_model: Path
) -> None:
    """The experiment moves to a new base checkpoint whose weights are corrupted (noise on
    every tensor); the control stays the good model. Training succeeds, the candidate's
    perplexity explodes, the gate fails, and the champion alias stays on the good version."""
    first = llmops(repo, "apply", "--json")
    assert first.returncode == 0, first.stderr
    champion = {"version": "assistant@1", "aliases": ["champion"]}
    lock = json.loads((repo / "llmops.lock").read_text())["resources"]
    assert lock["Model/assistant"]["outputs"] == champion

    make_noisy_model(tiny_model, repo / "models/tiny-v2")
    (repo / "specs/models/tiny-v2.yaml").write_text(
        model_spec("tiny-v2", {"type": "local", "path": "models/tiny-v2"})
    )
    spec = repo / "specs/experiments/exp.yaml"
    text = spec.read_text()
    assert text.count("base_model: tiny\n") == 1
    text = text.replace("base_model: tiny\n", "base_model: tiny-v2\n  control: {model: tiny}\n")
    spec.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "new base checkpoint")

    result = llmops(repo, "apply", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    results = {r["address"]: r for r in json.loads(result.stdout)["results"]}
    assert results["Experiment/exp/default"]["status"] == "applied"  # trained: not the cause
    evaluation = results["Evaluation/exp/default"]["outputs"]
    assert evaluation["baseline"] == "tiny@1" and evaluation["subject"] == "assistant@2"
    ppl = next(c for c in evaluation["comparison"] if c["metric"] == "ppl/perplexity")
    assert ppl["candidate"] > 10 * ppl["baseline"], ppl  # the candidate really is broken
    (gate,) = evaluation["gates"].items()
    assert gate[0] == "ppl/perplexity max_drop 1" and gate[1]["passed"] is False, gate
    assert gate[1]["detail"].endswith("vs allowed 1"), gate
    assert "gate ppl/perplexity max_drop 1: fail" in result.stderr.lower()  # named as it runs
    assert "failed gate(s) ppl/perplexity max_drop 1" in result.stderr
    assert results["Model/assistant"]["status"] == "failed"
    assert "failed gate(s) ppl/perplexity max_drop 1" in results["Model/assistant"]["message"]

    # Neither the lock file nor the registry moved the alias to the broken version.
    lock = json.loads((repo / "llmops.lock").read_text())["resources"]
    assert lock["Model/assistant"]["outputs"] == champion
    shown = llmops(repo, "models", "show", "assistant@champion", "--json")
    assert shown.returncode == 0, shown.stderr
    registered = json.loads(shown.stdout)
    assert (registered["ref"], registered["aliases"]) == ("assistant@1", ["champion"])
