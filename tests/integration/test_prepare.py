"""Preparing datasets in a real git + DVC repository, with the registry and a tiny tokenizer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from controller.apply.prepare import Preparer, read_split, version_dir
from controller.load.desired import load_desired
from controller.workspace import make_plan, open_registry
from tests.conftest import PROJECT_ROOT
from tests.tiny import model_spec

DATASET = """
apiVersion: llmops/v1
kind: Dataset
metadata: {name: faq}
spec:
  format: instruction
  sources:
    - {type: file, path: data/faq.jsonl, mapping: {prompt: question, response: answer}}
  on_bad_rows: skip
  tokenizer: tiny
  steps:
    - {step: normalize}
    - {step: filter, min_tokens: 3, max_tokens: 400}
    - {step: dedup}
    - {step: near_dedup, threshold: 0.8}
    - {step: redact_pii, allow: ['@orbitask\\.example$']}
    - {step: decontaminate, ngram: 13}
  splits: {train: 0.8, validation: 0.1, test: 0.1}
"""
SUITE = """
apiVersion: llmops/v1
kind: EvalSuite
metadata: {name: suite}
spec:
  tasks:
    - {name: qa, type: generate_until, data: {type: file, path: data/eval.jsonl},
       metrics: [rouge_l]}
"""


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("LLMOPS_REGISTRY_URL", raising=False)
    monkeypatch.delenv("LLMOPS_STATE_DIR", raising=False)
    root = tmp_path / "repo"
    (root / "specs/models").mkdir(parents=True)
    (root / "specs/datasets").mkdir(parents=True)
    (root / "specs/evals").mkdir(parents=True)
    (root / "data").mkdir()
    shutil.copytree(tiny_model, root / "models/tiny")
    (root / "specs/models/tiny.yaml").write_text(
        model_spec("tiny", {"type": "local", "path": "models/tiny"})
    )
    (root / "specs/datasets/faq.yaml").write_text(DATASET)
    (root / "specs/evals/suite.yaml").write_text(SUITE)
    shutil.copy(PROJECT_ROOT / "data/support-faq/faq.jsonl", root / "data/faq.jsonl")
    eval_rows = [
        json.loads(line)
        for line in (PROJECT_ROOT / "data/evals/support-faq-eval.jsonl").read_text().splitlines()
    ]
    (root / "data/eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in eval_rows))
    (root / ".gitignore").write_text(".llmops/\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "specs")
    return root


def prepare(root: Path, force: bool = False):  # type: ignore[no-untyped-def]
    loaded = load_desired(root)
    assert loaded.ok, [d.render() for d in loaded.diagnostics]
    return Preparer(loaded, open_registry(root), Console(quiet=True)).prepare("faq", force=force)


def test_prepare_reports_steps_and_second_run_does_no_work(repo: Path) -> None:
    first = prepare(repo)
    assert first.status == "prepared"
    steps = {s["step"]: s for s in first.stats["steps"]}
    assert steps["load"]["rows_in"] == 356
    assert steps["filter"]["dropped"]["empty"] == 2
    assert steps["dedup"]["duplicates"] == 4
    assert steps["near_dedup"]["near_duplicates"] >= 3
    assert steps["redact_pii"]["redactions"] == {"email": 3, "phone": 2, "ip": 2, "api_key": 0}
    assert first.stats["length_unit"] == "tokens"
    rows = first.stats["rows"]
    assert sum(rows.values()) == steps["decontaminate"]["rows_out"]
    assert (first.folder / "lengths.png").read_bytes().startswith(b"\x89PNG")
    stamps = {p.name: p.stat().st_mtime_ns for p in first.folder.iterdir()}

    second = prepare(repo)
    assert second.status == "cached"
    assert second.version.version == first.version.version
    assert {p.name: p.stat().st_mtime_ns for p in second.folder.iterdir()} == stamps
    assert len(open_registry(repo).datasets.history("faq")) == 1


def test_plan_prepares_only_when_spec_or_sources_change(repo: Path) -> None:
    _, before = make_plan(repo)
    assert before is not None
    assert next(a for a in before.actions if a.address == "Dataset/faq").kind.value == "create"
    prepare(repo)
    _, same = make_plan(repo)
    assert next(a for a in same.actions if a.address == "Dataset/faq").kind.value == "noop"
    with (repo / "data/faq.jsonl").open("a") as handle:
        handle.write(
            json.dumps(
                {"question": "Is there a dark mode?", "answer": "Yes, under Settings > Appearance."}
            )
            + "\n"
        )
    _, changed = make_plan(repo)
    action = next(a for a in changed.actions if a.address == "Dataset/faq")
    assert action.kind.value == "update" and action.runner == "prepare"
    assert action.reason.startswith("input file data/faq.jsonl changed")


def test_dvc_push_then_pull_restores_a_prepared_version(repo: Path) -> None:
    outcome = prepare(repo)
    prepared = repo / "data/prepared/faq"
    original = {p.name: p.read_bytes() for p in prepared.iterdir()}
    assert (repo / "data/prepared/faq.dvc").is_file()
    git(repo, "add", "data/prepared/faq.dvc", "data/prepared/.gitignore", ".dvc")
    git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(prepared)
    dvc = Path(sys.executable).with_name("dvc")
    result = subprocess.run([str(dvc), "pull"], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {p.name: p.read_bytes() for p in prepared.iterdir()} == original
    assert read_split(prepared, "train") == read_split(outcome.folder, "train")


def test_data_show_and_diff(repo: Path, run_cli: Callable[..., Any]) -> None:
    first = prepare(repo)
    rows = (repo / "data/faq.jsonl").read_text().splitlines()
    edited = json.loads(rows[0])
    edited["answer"] = edited["answer"] + " Annual billing saves 20%."
    rows[0] = json.dumps(edited)
    rows.append(
        json.dumps(
            {"question": "Is there a dark mode?", "answer": "Yes, under Settings > Appearance."}
        )
    )
    (repo / "data/faq.jsonl").write_text("\n".join(rows) + "\n")
    second = prepare(repo)
    assert second.version.version != first.version.version
    shown = run_cli("data", "show", "faq", "--json", cwd=repo)
    assert json.loads(shown.stdout)["version"] == second.version.version
    old = f"faq@{first.version.version[7:19]}"
    diff = run_cli("data", "diff", old, "faq", "--json", cwd=repo)
    assert diff.returncode == 0, diff.stderr
    result = json.loads(diff.stdout)
    totals = {
        k: sum(s[k] for s in result["splits"].values()) for k in ("added", "removed", "changed")
    }
    # The edited row may hash into another split: then it is removed there and added here.
    assert totals["added"] + totals["changed"] == 2
    assert totals["removed"] + totals["changed"] == 1
    assert result["stats"]["rows_total"]["after"] == result["stats"]["rows_total"]["before"] + 1


def test_cli_prepare_prints_per_step_counts(repo: Path, run_cli: Callable[..., Any]) -> None:
    result = run_cli("data", "prepare", "faq", cwd=repo)
    assert result.returncode == 0, result.stderr
    for step in (
        "load",
        "normalize",
        "filter",
        "dedup",
        "near_dedup",
        "redact_pii",
        "decontaminate",
    ):
        assert step in result.stdout
    assert "written to data/prepared/faq/" in result.stdout
    again = run_cli("data", "prepare", "faq", cwd=repo)
    assert "nothing to do" in again.stdout


def test_unknown_dataset_and_bad_rows_fail_clearly(repo: Path, run_cli: Callable[..., Any]) -> None:
    unknown = run_cli("data", "prepare", "faqs", cwd=repo)
    assert unknown.returncode == 2 and "did you mean 'faq'" in unknown.stderr
    spec = repo / "specs/datasets/faq.yaml"
    spec.write_text(spec.read_text().replace("on_bad_rows: skip", "on_bad_rows: fail"))
    with (repo / "data/faq.jsonl").open("a") as handle:
        handle.write("{not json\n")
    failed = run_cli("data", "prepare", "faq", cwd=repo)
    assert failed.returncode == 1
    assert "data/faq.jsonl:357: invalid JSON" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_mixture_augmentation_and_collected_data(repo: Path) -> None:
    (repo / "specs/datasets/mix.yaml").write_text("""
apiVersion: llmops/v1
kind: Dataset
metadata: {name: mix}
spec:
  format: instruction
  sources:
    - {type: dataset, dataset: faq, weight: 0.5}
    - {type: collected, store: feedback, mapping: {prompt: request, response: response}}
  steps:
    - {step: augment, method: template, templates: ["Quick question: {prompt}"],
       novelty_threshold: 0.95}
    - {step: augment, method: paraphrase, model: tiny, count: 3, novelty_threshold: 0.9}
  splits: {train: 1.0, validation: 0.0, test: 0.0}
""")
    (repo / "specs/deployments").mkdir()
    (repo / "specs/deployments/d.yaml").write_text(
        "apiVersion: llmops/v1\nkind: Deployment\nmetadata: {name: d}\n"
        "spec: {model: tiny, collect: {enabled: true, into: feedback}}\n"
    )
    store = repo / ".llmops/collected/feedback"
    store.mkdir(parents=True)
    (store / "2026-11-25.jsonl").write_text(
        json.dumps({"request": "How do I change my avatar?", "response": "Settings > Profile."})
        + "\n"
    )
    loaded = load_desired(repo)
    assert loaded.ok, [d.render() for d in loaded.diagnostics]
    outcome = Preparer(loaded, open_registry(repo), Console(quiet=True)).prepare("mix")
    steps = outcome.stats["steps"]
    faq_train = len(
        read_split(
            version_dir(
                open_registry(repo), "faq", open_registry(repo).datasets.find("faq").version
            ),
            "train",
        )
    )
    assert steps[0]["rows_out"] == round(faq_train * 0.5) + 1
    assert steps[1]["generated"] == steps[0]["rows_out"]  # one template per row, all novel
    assert 0 <= steps[2]["generated"] <= 3
    assert steps[2]["generated"] + steps[2]["rejected_not_novel"] >= 3
    train = read_split(outcome.folder, "train")
    assert any(r["prompt"] == "Quick question: How do I change my avatar?" for r in train)


def test_a_version_prepared_elsewhere_is_restored_from_the_dvc_remote(repo: Path) -> None:
    """The local store and DVC cache are gone (another machine); the remote has the data."""
    first = prepare(repo)
    original = {p.name: p.read_bytes() for p in first.folder.iterdir()}
    shutil.rmtree(first.folder)
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data/prepared/faq")
    again = prepare(repo)
    assert again.status == "cached"
    assert {p.name: p.read_bytes() for p in again.folder.iterdir()} == original
    assert len(open_registry(repo).datasets.history("faq")) == 1
