"""Issue 27, class 7: the pull-request runner boundary, on a real git repository and a real
apply of the tiny model.

GitHub checks a pull request out at its synthetic merge commit (refs/pull/N/merge), and a
misconfigured runner gives the pull request's job main's state folder. These tests play that:
the branch's apply runs at a merge commit M = merge(main, C) that never lands on main, over
the state folder main's apply uses.

- (a) metric rows a branch wrote are not main's: a plan on main does not count the branch's
  evaluation as done, and the dashboard labels the branch's numbers untrusted;
- (b) a pull request's apply against a state folder a trusted apply marked fails with a
  clear message (unless --allow-shared-state);
- (c) the recorded commit is the pull request's head C, not M, so after `git merge --no-ff`
  main reuses the branch's result instead of training again;
- (d) the dashboard's per-sample lookup picks main's evaluation folder, not the branch's.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from controller.state.paths import StatePaths
from controller.state.provenance import Provenance
from controller.state.registry.store import Registry
from tests.apply_repo import build_repo, git
from tests.integration.test_apply import llmops

SCRUBBED = (
    "LLMOPS_REGISTRY_URL",
    "LLMOPS_STATE_DIR",
    "LLMOPS_FAULT_KILL",
    "LLMOPS_COMMIT",
    "LLMOPS_ALLOW_SHARED_STATE",
    "LLMOPS_PROTECTED_REFS",
    "GITHUB_REF",
    "GITHUB_HEAD_REF",
    "GITHUB_SHA",
    "GITHUB_EVENT_NAME",
)


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in SCRUBBED:
        monkeypatch.delenv(name, raising=False)
    return build_repo(tmp_path / "repo", tiny_model)


def registry(state: Path) -> Registry:
    return Registry.open(StatePaths(state))


def test_pull_request_at_merge_commit_on_shared_state(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "runner-state"  # the runner's one LLMOPS_STATE_DIR
    problems: list[str] = []  # every class of the attack is checked in this one run

    def check(ok: bool, problem: str) -> None:
        if not ok:
            problems.append(problem)

    # The pull request: a branch commit C, main moves on (B), and the runner's job checks out
    # GitHub's M = merge(B, C) in its own workspace (a clone, as actions/checkout makes).
    git(repo, "checkout", "-qb", "feature")
    (repo / "NOTES.md").write_text("a change under review\n")
    git(repo, "add", "NOTES.md")
    git(repo, "commit", "-qm", "feature work")
    head = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "checkout", "-q", "main")
    (repo / "CHANGELOG.md").write_text("main moved on\n")
    git(repo, "add", "CHANGELOG.md")
    git(repo, "commit", "-qm", "main moves")
    workspace = tmp_path / "pr-workspace"
    git(tmp_path, "clone", "-q", str(repo), str(workspace))
    git(workspace, "checkout", "-q", "--detach", "origin/main")
    git(workspace, "merge", "-q", "--no-ff", "-m", "Merge C into B", "origin/feature")
    merge = git(workspace, "rev-parse", "HEAD").strip()
    assert merge != head
    pull_request = {
        "LLMOPS_STATE_DIR": str(shared),
        "GITHUB_REF": "refs/pull/7/merge",
        "GITHUB_HEAD_REF": "feature",
        "GITHUB_SHA": merge,
        "GITHUB_EVENT_NAME": "pull_request",
    }
    branch = llmops(workspace, "apply", "--skip-deploy", "--json", env=pull_request)
    assert branch.returncode == 0, branch.stderr
    assert "ref: feature (untrusted" in branch.stderr
    version = registry(shared).find("assistant@1")
    assert version is not None
    recorded = Provenance.from_dict(version.extra.get("provenance"))
    assert recorded is not None and not recorded.trusted
    # (c) the pull request's head, which a merge puts on main; M never is.
    check(
        recorded.commit == head,
        f"(c) recorded {recorded.commit}, the synthetic merge commit was {merge}",
    )

    # (a) main's checkout, before the merge: the branch's evaluation is not main's.
    on_main = {"LLMOPS_STATE_DIR": str(shared)}
    planned = llmops(repo, "plan", "--json", env=on_main)
    assert planned.returncode in (0, 3), planned.stderr
    actions = {a["address"]: a["action"] for a in json.loads(planned.stdout)["actions"]}
    evaluations = {a: k for a, k in actions.items() if a.startswith("Evaluation/")}
    assert evaluations, actions
    check(
        all(k != "noop" for k in evaluations.values()),
        f"(a) main's plan counts the branch's evaluations as done: {evaluations}",
    )
    monkeypatch.setenv("LLMOPS_STATE_DIR", str(shared))
    from controller.ui.models import model_detail
    from controller.ui.state import UiState

    detail = model_detail(UiState.for_repo(repo), "tiny")
    assert detail is not None
    shown = {k for line in detail.versions for k in line.metrics}
    assert shown, "the branch evaluated tiny: its numbers are in the registry"
    check(
        all("untrusted" in k for k in shown),
        f"(a) dashboard shows branch numbers as main's: {shown}",
    )

    # (c) merge with a merge commit: main reuses the branch's result under the trust rule.
    merged = subprocess.run(
        [
            *("git", "-c", "user.email=t@example.com", "-c", "user.name=t", "merge", "-q"),
            *("--no-ff", "-m", "Merge pull request #7 from feature", "feature"),
        ],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert merged.returncode == 0, merged.stdout + merged.stderr + git(repo, "status")
    main = llmops(repo, "apply", "--skip-deploy", "--json", env=on_main)
    assert main.returncode == 0, main.stderr
    assert "ref: main (trusted" in main.stderr
    results = {r["address"]: r for r in json.loads(main.stdout)["results"]}
    run = results["Experiment/exp/default"]
    check(
        run["outputs"]["version"] == "assistant@1" and registry(shared).find("assistant@2") is None,
        f"(c) main trained again after the merge: {run['outputs']['version']}",
    )

    # (d) a later push to the pull request evaluates again; the dashboard shows main's.
    from controller.ui.evaluations import results_folder

    ui = UiState.for_repo(repo)
    folders = sorted((shared / "evals" / "smoke" / "tiny@1").glob("*/results.json"))
    untrusted = [f for f in folders if f.parent.name.endswith(".untrusted")]
    assert untrusted and len(folders) > len(untrusted), folders
    later = max(f.stat().st_mtime for f in folders) + 60
    for found in untrusted:
        os.utime(found, (later, later))
    picked = results_folder(ui, "smoke", "tiny@1")
    check(
        picked is not None and not picked.name.endswith(".untrusted"),
        f"(d) the dashboard's samples come from {picked}",
    )

    # (b) the next pull request's job gets the state folder main's apply marked: refused.
    again = llmops(workspace, "apply", "--skip-deploy", env=pull_request)
    check(
        again.returncode == 2
        and "marked trusted" in again.stderr
        and "--allow-shared-state" in again.stderr,
        f"(b) a pull request's apply on main's state folder exited {again.returncode}",
    )
    assert not problems, "\n".join(problems)
