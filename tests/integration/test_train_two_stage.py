"""`llmops apply` of a two-stage experiment on the tiny model: SFT, then DPO from its result,
in one experiment; planned in order, lineage from the SFT version, retrained with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.workspace import open_registry
from runners.weights import load_causal_lm
from tests.apply_repo import committed_repo

WORDS = ("CSV", "Paris")

SPECS = {
    "specs/datasets/faq.yaml": """
apiVersion: llmops/v1
kind: Dataset
metadata: {name: faq}
spec:
  format: instruction
  sources: [{type: file, path: data/faq.jsonl}]
  splits: {train: 1.0, validation: 0.0, test: 0.0}
""",
    "specs/datasets/pairs.yaml": """
apiVersion: llmops/v1
kind: Dataset
metadata: {name: pairs}
spec:
  format: preference
  sources: [{type: file, path: data/pairs.jsonl}]
  splits: {train: 1.0, validation: 0.0, test: 0.0}
""",
    "specs/experiments/recipe.yaml": """
apiVersion: llmops/v1
kind: Experiment
metadata: {name: recipe}
spec:
  base_model: tiny
  dataset: faq
  training:
    max_steps: 3
    batch_size: 4
    learning_rate: 1.0e-3
    max_seq_len: 64
    merge: true
    lora: {r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}
  variants:
    dpo:
      start_from: default
      dataset: pairs
      training.objective: dpo
      training.learning_rate: 1.0e-2
      training.merge: false
  register_as: assistant
""",
}


def llmops(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli.main", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
    )


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        monkeypatch.delenv(name, raising=False)
    answers = [
        {"prompt": f"Say {WORDS[i % 2]} for number {i}.", "response": f"It is {WORDS[i % 2]}."}
        for i in range(24)
    ]
    pairs = [
        {
            "prompt": f"Say {WORDS[i % 2]} for number {i}.",
            "chosen": f"The answer is {WORDS[i % 2]}.",
            "rejected": f"The answer is {WORDS[1 - i % 2]}.",
        }
        for i in range(24)
    ]
    data = {
        "data/faq.jsonl": "".join(json.dumps(r) + "\n" for r in answers),
        "data/pairs.jsonl": "".join(json.dumps(r) + "\n" for r in pairs),
    }
    return committed_repo(tmp_path / "repo", tiny_model, {**SPECS, **data}, "two stages")


def experiment_actions(root: Path) -> dict[str, dict]:
    plan = llmops(root, "plan", "--json")
    assert plan.returncode in (0, 3), plan.stdout + plan.stderr  # 3: changes
    return {
        a["address"]: a for a in json.loads(plan.stdout)["actions"] if a["kind"] == "Experiment"
    }


def test_sft_then_dpo_in_one_experiment(repo: Path) -> None:
    planned = experiment_actions(repo)
    assert planned["Experiment/recipe/default"]["wave"] < planned["Experiment/recipe/dpo"]["wave"]

    applied = llmops(repo, "apply", "--json")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    results = [r for r in json.loads(applied.stdout)["results"] if "Experiment/" in r["address"]]
    assert [(r["address"], r["status"], r["outputs"]["version"]) for r in results] == [
        ("Experiment/recipe/default", "applied", "assistant@1"),
        ("Experiment/recipe/dpo", "applied", "assistant@2"),
    ]
    registry = open_registry(repo)
    sft, dpo = registry.find("assistant@1"), registry.find("assistant@2")
    tiny = registry.find("tiny")
    assert sft.lineage.base_version_id == tiny.id
    assert {t.key: t.value for t in sft.tags}["kind"] == "merged"
    # The DPO version continues the SFT version: its base, its card, its adapter's base.
    assert dpo.lineage.base_version_id == sft.id
    assert dpo.lineage.experiment_run == "recipe/dpo"
    assert "base_model: assistant@1" in dpo.card
    folder = registry.materialize(dpo)
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "../../assistant/1"
    assert load_causal_lm(folder).peft_config  # the adapter on the SFT weights, as served
    log = next((repo / ".llmops/runs/recipe/dpo").glob("*/log.jsonl")).read_text()
    assert "rewards/margins" in log

    assert {a["action"] for a in experiment_actions(repo).values()} == {"noop"}
    # Only the SFT run's spec changes: the DPO run is retrained too, and says why.
    spec = repo / "specs/experiments/recipe.yaml"
    spec.write_text(spec.read_text().replace("learning_rate: 1.0e-3", "learning_rate: 2.0e-3"))
    planned = experiment_actions(repo)
    assert planned["Experiment/recipe/default"]["action"] == "retrain"
    assert planned["Experiment/recipe/dpo"]["action"] == "retrain"
    before, after = (
        planned["Experiment/recipe/default"][key].removeprefix("sha256:")[:12]
        for key in ("before", "after")
    )
    assert planned["Experiment/recipe/dpo"]["changes"] == [
        f"input Experiment/recipe/default changed ({before} -> {after})"
    ]
