"""A tiny repository for the dashboard's tests: tests/apply_repo.py's repository with a second
experiment run, a brain scan, an arena with a scripted judge and an unapplied deployment."""

from __future__ import annotations

from pathlib import Path

from tests.apply_repo import build_repo, git
from tests.conftest import PROJECT_ROOT
from tests.tiny import add_duel_contenders, duel_arena

ARENA = duel_arena(limit=6, battles=4, rounds=100)

EXTRA = """  variants:
    faster: {training.learning_rate: 3.0e-3}
  inspect: {probes: data/probes.txt, top_k: 3}
"""


def build_ui_repo(root: Path, tiny_model: Path) -> Path:
    """The repository, committed in two commits (so history has a timeline)."""
    build_repo(root, tiny_model, deploy_port=None)
    add_duel_contenders(tiny_model, root)
    (root / "specs/arenas").mkdir(parents=True, exist_ok=True)
    (root / "specs/arenas/duel.yaml").write_text(ARENA)
    experiment = root / "specs/experiments/exp.yaml"
    experiment.write_text(experiment.read_text() + EXTRA)
    (root / "data/probes.txt").write_text(
        "\n".join((PROJECT_ROOT / "data/support-faq/probes.txt").read_text().splitlines()[:2])
        + "\n"
    )
    (root / "specs/deployments").mkdir(parents=True, exist_ok=True)
    (root / "specs/deployments/assistant.yaml").write_text(
        "apiVersion: llmops/v1\nkind: Deployment\nmetadata: {name: assistant}\n"
        "spec:\n  model: assistant@champion\n  target: local\n  port: 18431\n"
    )
    git(root, "add", "-A")
    git(root, "commit", "-qm", "arena, variant, scan and deployment")
    return root
