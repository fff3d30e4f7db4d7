"""`llmops report --base`: the report of a real apply, written and posted to a GitHub stand-in
(one comment, updated in place; one commit status per gate)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.apply_repo import build_repo
from tests.fake_github import FakeGitHub
from tests.integration.test_apply import llmops
from tests.servers import serve

SHA = "a" * 40


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


def test_kserve_manifest_diff_between_base_and_branch(tmp_path: Path) -> None:
    """The report's deployment section diffs the KServe manifests rendered from the base's
    lock entry and from this branch's spec (here: canary 10% -> 25%, 3 -> 5 replicas)."""
    import shutil

    from controller.cli.report import manifest_diffs
    from controller.load.desired import load_desired
    from controller.state.lockfile import lock_entry
    from tests.conftest import PROJECT_ROOT

    root = tmp_path / "demo"
    for folder in ("specs", "data"):
        shutil.copytree(PROJECT_ROOT / folder, root / folder)
    spec_file = root / "specs/deployments/support-assistant.yaml"
    text = spec_file.read_text().replace("target: local", "target: kserve")
    text = text.replace(
        "canary_traffic_percent: 10}",
        "canary_traffic_percent: 10, storage_uri: 'pvc://models/support-assistant'}",
    )
    text = text.replace(
        "api_key: {env: SUPPORT_ASSISTANT_API_KEY}", "api_key: {secret: keys/support}"
    )
    spec_file.write_text(text)
    base = load_desired(root)
    address = "Deployment/support-assistant"
    base_lock = {address: lock_entry(base.desired, address, {"version": "support-assistant@1"})}
    spec_file.write_text(
        text.replace("canary_traffic_percent: 10", "canary_traffic_percent: 25").replace(
            "max_replicas: 3", "max_replicas: 5"
        )
    )
    head = load_desired(root)
    diffs = manifest_diffs(root, head, base_lock, {})
    diff = diffs[address]
    assert "-    canaryTrafficPercent: 10" in diff and "+    canaryTrafficPercent: 25" in diff
    assert "-    maxReplicas: 3" in diff and "+    maxReplicas: 5" in diff
