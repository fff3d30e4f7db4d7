"""`llmops report --base`: the report of a real apply, written and posted to a GitHub stand-in
(one comment, updated in place; one commit status per gate); a branch's report before and
after apply (golden files in tests/golden/report/); KServe manifest diffs; the state folder."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.apply_repo import build_repo, git
from tests.conftest import PROJECT_ROOT
from tests.fake_github import FakeGitHub
from tests.integration.test_apply import llmops
from tests.servers import serve

SHA = "a" * 40
GOLDEN = Path(__file__).parents[1] / "golden" / "report"


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        monkeypatch.delenv(name, raising=False)
    return build_repo(tmp_path / "repo", tiny_model)


def test_report_after_apply_is_written_and_posted_once_then_updated(
    repo: Path, tmp_path: Path
) -> None:
    assert llmops(repo, "apply", "--skip-deploy").returncode == 0
    fake = FakeGitHub(commits=(SHA,))
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 7, "head": {"sha": SHA}}}))
    out = tmp_path / "out" / "report.md"
    with serve(fake.handler()) as url:
        env = {
            "GITHUB_TOKEN": fake.token,
            "GITHUB_REPOSITORY": "acme/llm-specs",
            "GITHUB_API_URL": url,
            "GITHUB_EVENT_PATH": str(event),
        }
        first = llmops(repo, "report", "--base", "main", "--output", str(out), "--post", env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "report posted" in first.stdout
        second = llmops(repo, "report", "--base", "main", "--output", str(out), "--post", env=env)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "report updated" in second.stdout

    text = out.read_text()
    assert "✅ all 1 gate(s) passed" in text
    assert "| create | `Experiment/exp/default` |" in text
    assert "#### `Evaluation/exp/default`: assistant@1 against tiny@1" in text
    assert "| ppl/perplexity |" in text and "✅ max_drop 1 |" in text
    assert "![loss curves of Experiment/exp/default](report-assets/" in text
    image = out.parent / "report-assets" / "experiment-exp-default.png"
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    ours = fake.comments_on(7)
    assert len(ours) == 1 and ours[0]["body"].startswith("<!-- llmops-report -->")
    contexts = {s["context"]: s["state"] for s in fake.statuses[SHA]}
    assert contexts["llmops/gate/smoke/ppl/perplexity/max_drop"] == "success"
    assert contexts["llmops/plan"] == "success"


def test_report_exits_1_on_a_failed_gate_and_2_on_an_unknown_base(repo: Path) -> None:
    suite = repo / "specs/evals/smoke.yaml"
    suite.write_text(suite.read_text().replace("max_drop: 1.0", "max: 1.0"))
    assert llmops(repo, "apply", "--skip-deploy").returncode == 1
    failed = llmops(repo, "report", "--base", "main")
    assert failed.returncode == 1
    report = (repo / ".llmops/reports/report.md").read_text()
    assert "❌ 1 of 1 gate(s) failed" in report
    unknown = llmops(repo, "report", "--base", "no-such-branch")
    assert unknown.returncode == 2
    assert "--base no-such-branch: no such commit" in unknown.stderr


def post_env(fake: FakeGitHub, url: str, tmp_path: Path) -> dict[str, str]:
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 7, "head": {"sha": SHA}}}))
    return {
        "GITHUB_TOKEN": fake.token,
        "GITHUB_REPOSITORY": "acme/llm-specs",
        "GITHUB_API_URL": url,
        "GITHUB_EVENT_PATH": str(event),
    }


def normalised(text: str, root: Path) -> str:
    """What varies between runs: the head commit and digests (of the tiny model's files,
    hence of every resource). Metrics are kept: training and evaluation are seeded and give
    the same numbers on every run."""
    head = git(root, "rev-parse", "--short", "HEAD").strip()
    text = text.replace(f"`{head}`", "`<head>`")
    return re.sub(r"\b[0-9a-f]{12,64}\b", "<digest>", text)


def assert_golden(name: str, text: str) -> None:
    """Compare with tests/golden/report/<name>; UPDATE_GOLDEN=1 rewrites it for review."""
    golden = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert golden.exists(), f"run UPDATE_GOLDEN=1 pytest {__file__} to create {golden}"
    assert text == golden.read_text(encoding="utf-8")


def test_learning_rate_change_is_pending_before_apply_and_decided_after(
    repo: Path, tmp_path: Path
) -> None:
    """A branch that only doubles the experiment's learning rate: before apply its plan
    retrains and re-evaluates, so the gates are pending (never "passed" from the base's
    evaluation; commit statuses "pending", exit 0); after apply they are decided, with
    intervals."""
    assert llmops(repo, "apply", "--skip-deploy").returncode == 0
    git(repo, "add", "llmops.lock")
    git(repo, "commit", "-qm", "apply")
    git(repo, "checkout", "-qb", "double-lr")
    experiment = repo / "specs/experiments/exp.yaml"
    experiment.write_text(
        experiment.read_text().replace("learning_rate: 1.0e-3", "learning_rate: 2.0e-3")
    )
    git(repo, "commit", "-qam", "exp: double the learning rate")

    fake = FakeGitHub(commits=(SHA,))
    with serve(fake.handler()) as url:
        before = llmops(
            repo, "report", "--base", "main", "--post", env=post_env(fake, url, tmp_path)
        )
    assert before.returncode == 0, before.stdout + before.stderr
    text = (repo / ".llmops/reports/report.md").read_text()
    assert "passed" not in text and "✅" not in text
    assert_golden("learning_rate_before_apply.md", normalised(text, repo))
    contexts = {s["context"]: s["state"] for s in fake.statuses[SHA]}
    assert contexts["llmops/gate/smoke/ppl/perplexity/max_drop"] == "pending"

    assert llmops(repo, "apply", "--skip-deploy").returncode == 0
    after = llmops(repo, "report", "--base", "main")
    assert after.returncode == 0, after.stdout + after.stderr
    text = (repo / ".llmops/reports/report.md").read_text()
    assert_golden("learning_rate_after_apply.md", normalised(text, repo))


def kserve_repo(root: Path) -> Path:
    """The demo's specs with a KServe deployment, committed on main with a lock file that
    records every resource as applied; the branch `canary` raises the canary to 25% and
    the replicas to 5."""
    from controller.load.desired import load_desired
    from controller.state.lockfile import LOCK_FILE, lock_from_desired, write_lock

    for folder in ("specs", "data"):
        shutil.copytree(PROJECT_ROOT / folder, root / folder)
    spec_file = root / "specs/deployments/support-assistant.yaml"
    text = spec_file.read_text().replace("target: local", "target: kserve")
    text = text.replace(
        "canary_traffic_percent: 10}",
        "canary_traffic_percent: 10, storage_uri: 'pvc://models/support-assistant'}",
    )
    text = text.replace(
        "api_key: {env: LLMOPS_KEY_SUPPORT_ASSISTANT}", "api_key: {secret: keys/support}"
    )
    spec_file.write_text(text)
    base = load_desired(root)
    assert base.desired is not None, [d.render() for d in base.diagnostics]
    write_lock(root / LOCK_FILE, lock_from_desired(base.desired))
    (root / ".gitignore").write_text(".llmops/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "demo on kserve")
    git(root, "checkout", "-qb", "canary")
    spec_file.write_text(
        text.replace("canary_traffic_percent: 10", "canary_traffic_percent: 25").replace(
            "max_replicas: 3", "max_replicas: 5"
        )
    )
    git(root, "commit", "-qam", "canary 25%")
    return root


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("clean_env")
def test_report_shows_the_kserve_manifest_diff_of_a_changed_deployment(tmp_path: Path) -> None:
    """`llmops report` diffs the KServe manifests rendered from the base's lock entry and
    from this branch's spec (canary 10% -> 25%, 3 -> 5 replicas)."""
    root = kserve_repo(tmp_path / "demo")
    done = llmops(root, "report", "--base", "main")
    assert done.returncode == 0, done.stdout + done.stderr
    text = (root / ".llmops/reports/report.md").read_text()
    assert "| `Deployment/support-assistant` | deploy |" in text
    assert "<details><summary>KServe manifests</summary>" in text
    diff = text.split("```diff\n", 1)[1].split("```", 1)[0].splitlines()
    assert "-    canaryTrafficPercent: 10" in diff and "+    canaryTrafficPercent: 25" in diff
    assert "-    maxReplicas: 3" in diff and "+    maxReplicas: 5" in diff


@pytest.mark.usefixtures("clean_env")
def test_report_is_written_in_the_state_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = kserve_repo(tmp_path / "demo")
    state = tmp_path / "elsewhere"
    monkeypatch.setenv("LLMOPS_STATE_DIR", str(state))
    done = llmops(root, "report", "--base", "main")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (state / "reports/report.md").read_text().startswith("<!-- llmops-report -->")
    assert not (root / ".llmops").exists()


def test_git_reads_refs_files_and_changes_and_names_what_is_wrong(tmp_path: Path) -> None:
    from controller.state import git as state_git

    root = tmp_path / "repo"
    (root / "specs").mkdir(parents=True)
    (root / "specs/a.yaml").write_text("a: 1\n")
    assert state_git.head_commit(root) is None  # not a repository yet
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "first")
    head = state_git.head_commit(root)
    assert head and state_git.resolve_commit(root, "main") == head
    assert head.startswith(state_git.short_head(root) or "-")
    assert state_git.show_file(root, "main", "specs/a.yaml") == "a: 1\n"
    assert state_git.show_file(root, "main", "llmops.lock") is None
    assert state_git.changed_paths(root, "specs") == []
    (root / "specs/a.yaml").write_text("a: 2\n")
    assert state_git.changed_paths(root, "specs") == ["specs/a.yaml"]
    with pytest.raises(state_git.GitError, match=r"nope: no such commit in .*\(git fetch origin\)"):
        state_git.show_file(root, "nope", "specs/a.yaml")
