"""`llmops train` through the controller: runs registered with lineage, reuse, plan."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from controller.apply.train import Trainer
from controller.load.desired import load_desired
from controller.workspace import make_plan, open_registry
from tests.conftest import PROJECT_ROOT
from tests.tiny import model_spec

SPECS = {
    "specs/datasets/faq.yaml": """
apiVersion: llmops/v1
kind: Dataset
metadata: {name: faq}
spec:
  format: instruction
  sources:
    - {type: file, path: data/faq.jsonl, mapping: {prompt: question, response: answer}}
  on_bad_rows: skip
  steps: [{step: normalize}, {step: filter}, {step: dedup}]
  splits: {train: 0.85, validation: 0.15, test: 0.0}
""",
    "specs/experiments/exp.yaml": """
apiVersion: llmops/v1
kind: Experiment
metadata: {name: exp}
spec:
  base_model: tiny
  dataset: faq
  training:
    max_steps: 4
    batch_size: 4
    learning_rate: 1.0e-3
    max_seq_len: 96
    eval_interval: 2
    checkpoint_interval: 2
    lora: {r: 4, alpha: 8, target_modules: [q_proj, v_proj]}
  variants:
    fast: {training.learning_rate: 3.0e-3}
  register_as: helper
""",
}


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("LLMOPS_REGISTRY_URL", raising=False)
    monkeypatch.delenv("LLMOPS_STATE_DIR", raising=False)
    root = tmp_path / "repo"
    for relative, text in SPECS.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    (root / "specs/models").mkdir(parents=True)
    (root / "specs/models/tiny.yaml").write_text(
        model_spec("tiny", {"type": "local", "path": "models/tiny"})
    )
    shutil.copytree(tiny_model, root / "models/tiny")
    (root / "data").mkdir()
    lines = (PROJECT_ROOT / "data/support-faq/faq.jsonl").read_text().splitlines()[:80]
    (root / "data/faq.jsonl").write_text("\n".join(lines) + "\n")
    (root / ".gitignore").write_text(".llmops/\n")
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "x"],
    ):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return root


def trainer(root: Path, overrides: list[str] | None = None) -> Trainer:
    loaded = load_desired(root, overrides=overrides)
    assert loaded.ok, [d.render() for d in loaded.diagnostics]
    return Trainer(loaded, open_registry(root), Console(quiet=True))


def test_run_is_registered_with_lineage_and_reused(repo: Path) -> None:
    outcome = trainer(repo).train("exp", "default")
    assert outcome.status == "trained" and outcome.ref == "helper@1"
    version = open_registry(repo).find("helper@1")
    lineage = version.lineage
    base = open_registry(repo).find("tiny")
    assert lineage.base_version_id == base.id
    assert lineage.dataset_version == open_registry(repo).datasets.find("faq").version
    assert lineage.experiment_run == "exp/default"
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    assert lineage.git_commit == head
    assert lineage.config_digest == version.spec_digest
    assert lineage.packages["torch"].startswith("2.13.0")
    assert lineage.seeds == {"training": 0}
    paths = {f.path for f in version.files}
    assert {"adapter_model.safetensors", "training/curves.png", "training/log.jsonl"} <= paths
    metrics = {m.name: m.value for m in version.metrics}
    assert metrics["train/final_eval_loss"] < metrics["train/first_eval_loss"]
    assert "base_model: tiny@1" in version.card

    again = trainer(repo).train("exp", "default")
    assert again.status == "cached" and again.ref == "helper@1"


def test_plan_retrains_only_the_changed_run(repo: Path) -> None:
    t = trainer(repo)
    for run in ("default", "fast"):
        t.train("exp", run)
    _, plan = make_plan(repo)
    runs = {a.address: a.kind.value for a in plan.actions if a.resource_kind == "Experiment"}
    assert runs == {"Experiment/exp/default": "noop", "Experiment/exp/fast": "noop"}
    spec = repo / "specs/experiments/exp.yaml"
    spec.write_text(spec.read_text().replace("learning_rate: 3.0e-3", "learning_rate: 2.0e-3"))
    _, plan = make_plan(repo)
    runs = {a.address: a.kind.value for a in plan.actions if a.resource_kind == "Experiment"}
    assert runs == {"Experiment/exp/default": "noop", "Experiment/exp/fast": "retrain"}


def test_cli_train_json_and_unknown_run(repo: Path, run_cli: Callable[..., Any]) -> None:
    result = run_cli("train", "exp", "--variant", "fast", "--json", cwd=repo)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    (row,) = payload["runs"]
    assert row["run"] == "fast" and row["status"] == "trained" and row["steps"] == 4
    assert Path(payload["curves"]).is_file()
    unknown = run_cli("train", "exp", "--variant", "slow", cwd=repo)
    assert unknown.returncode == 2 and "runs: default, fast" in unknown.stderr


def test_unhealthy_run_fails_with_the_health_message(
    repo: Path, run_cli: Callable[..., Any]
) -> None:
    result = run_cli(
        "train", "exp", "--variant", "default", "-o", "exp:training.learning_rate=1000", cwd=repo
    )
    assert result.returncode == 1
    assert "exp/default:" in result.stderr and "at step" in result.stderr
    assert "layer" in result.stderr and "Traceback" not in result.stderr
    assert open_registry(repo).find("helper") is None
