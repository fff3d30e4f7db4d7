"""The trust boundary on a real git repository with the tiny model: ML cache poisoning.

A branch changes the training code (the "backdoor"), lets the pull request's apply train and
store the model under the digest main will compute, reverts the code and merges. Main's
apply must not promote the branch-computed version: it trains again, and the report on the
pull request said the result came from a ref main does not trust.

The branch's digest is made to equal main's by pointing its code digest at a clean copy of
the runners (LLMOPS_RUNNERS_SOURCE), as a branch that tampers with the digest would; the
repository carries its own runners/ (a copy), as this project's repository does, so main can
read the branch's training code from git.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from controller.state.paths import StatePaths
from controller.state.provenance import Provenance
from controller.state.registry.store import Registry
from tests.apply_repo import build_repo, git
from tests.conftest import PROJECT_ROOT
from tests.integration.test_apply import llmops

CLIP = "torch.nn.utils.clip_grad_norm_(params, 1.0)"


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in (
        "LLMOPS_REGISTRY_URL",
        "LLMOPS_STATE_DIR",
        "LLMOPS_FAULT_KILL",
        "GITHUB_REF",
        "GITHUB_HEAD_REF",
        "LLMOPS_PROTECTED_REFS",
    ):
        monkeypatch.delenv(name, raising=False)
    root = build_repo(tmp_path / "repo", tiny_model)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(PROJECT_ROOT / "runners", root / "runners", ignore=ignore)
    shutil.copytree(PROJECT_ROOT / "runners", tmp_path / "clean" / "runners", ignore=ignore)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "the runners, as this project's repository carries them")
    return root


def provenance(root: Path, ref: str) -> Provenance | None:
    version = Registry.open(StatePaths.for_repo(root)).find(ref)
    assert version is not None, ref
    return Provenance.from_dict(version.extra.get("provenance"))


def test_a_branch_cannot_plant_a_model_for_main(repo: Path, tmp_path: Path) -> None:
    main_env = {"LLMOPS_RUNNERS_SOURCE": str(repo)}
    lying_env = {"LLMOPS_RUNNERS_SOURCE": str(tmp_path / "clean")}

    # The branch: training code changed, digest made to look like main's.
    git(repo, "checkout", "-qb", "feature")
    loop = repo / "runners/train/loop.py"
    original = loop.read_text()
    assert CLIP in original
    loop.write_text(original.replace(CLIP, CLIP.replace("1.0", "1e-6")))
    git(repo, "commit", "-qam", "tune clipping")
    poisoned_commit = git(repo, "rev-parse", "HEAD").strip()
    branch = llmops(repo, "apply", "--skip-deploy", "--json", env=lying_env)
    assert branch.returncode == 0, branch.stderr
    assert "ref: feature (untrusted" in branch.stderr
    results = {r["address"]: r for r in json.loads(branch.stdout)["results"]}
    assert results["Experiment/exp/default"]["outputs"]["version"] == "assistant@1"
    assert results["Model/assistant"]["status"] == "skipped"  # no alias moves from a branch
    planted = provenance(repo, "assistant@1")
    assert planted is not None
    assert (planted.ref, planted.trusted, planted.commit) == ("feature", False, poisoned_commit)
    # The dataset the branch prepared records where it came from too; its code (runners/data)
    # is main's at a commit main will contain, so main may reuse it under the rule.
    (dataset,) = Registry.open(StatePaths.for_repo(repo)).datasets.history("faq")
    recorded = Provenance.from_dict(dataset.stats.get("provenance"))
    assert recorded is not None and (recorded.ref, recorded.trusted) == ("feature", False)

    # The pull request's report says main will not trust it.
    git(repo, "add", "llmops.lock")
    git(repo, "commit", "-qm", "apply")
    report = tmp_path / "report.md"
    shown = llmops(repo, "report", "--base", "main", "--output", str(report), env=lying_env)
    assert shown.returncode in (0, 1), shown.stderr
    text = report.read_text()
    assert "Computed on a ref main does not trust" in text
    assert "`Experiment/exp/default`: assistant@1 from feature @" in text

    # Revert the code, merge: the digest is main's and nothing in the diff shows training code.
    loop.write_text(original)
    git(repo, "commit", "-qam", "revert clipping")
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", "-m", "Merge pull request #7 from feature", "feature")

    main = llmops(repo, "apply", "--json", env=main_env)
    assert main.returncode == 0, main.stderr
    assert "ref: main (trusted" in main.stderr
    assert "not reusing assistant@1" in main.stderr or "untrusted ref 'feature'" in main.stderr
    results = {r["address"]: r for r in json.loads(main.stdout)["results"]}
    assert results["Experiment/exp/default"]["status"] == "applied"
    assert results["Experiment/exp/default"]["outputs"]["version"] == "assistant@2"
    assert results["Model/assistant"]["outputs"]["version"] == "assistant@2"
    champion = Registry.open(StatePaths.for_repo(repo)).find("assistant@champion")
    assert champion is not None and champion.number == 2
    trusted = provenance(repo, "assistant@2")
    assert trusted is not None and (trusted.ref, trusted.trusted) == ("main", True)
