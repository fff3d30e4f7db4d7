"""`llmops history` on a real git repository: changes, PR numbers, and what a deployment served."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from controller.cli.history import history_command
from controller.state.lockfile import LOCK_FILE, LockFile, write_lock

app = typer.Typer()
app.command()(history_command)

DEPLOYMENTS = """
    apiVersion: llmops/v1
    kind: Deployment
    metadata: {{name: support-assistant}}
    spec: {{model: "{model}", target: local, runtime: transformers, port: 8000}}
    ---
    apiVersion: llmops/v1
    kind: Deployment
    metadata: {{name: support-canary}}
    spec: {{model: smollm2@1, target: local, runtime: transformers, port: {canary_port}}}
    """
EXPERIMENT = """
    apiVersion: llmops/v1
    kind: Experiment
    metadata: {{name: support-lora}}
    spec:
      base_model: smollm2
      dataset: support-faq
      training: {{learning_rate: {lr}, epochs: 1}}
      variants:
        lr-high: {{training.learning_rate: 5.0e-4}}
      eval_suite: support-regression
      register_as: support-assistant
    """


def entry(kind: str, digest: str, outputs: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "digest": f"sha256:{digest * 64}"[:71],
        "code_version": f"{kind.lower()}-1",
        "inputs": {},
        "spec": spec,
        "outputs": outputs,
    }


def trained(version: str, loss: float) -> dict[str, Any]:
    return {"version": version, "metrics": {"eval_loss": loss}}


def evaluated(version: str, rouge: float) -> dict[str, Any]:
    """Shaped like `llmops apply`'s Evaluation outputs (controller/apply/engine.py)."""
    return {
        "subject": version,
        "suite": "support-regression",
        "baseline": "smollm2@1",
        "metrics": {"answers/rouge_l": rouge, "answers/exact_match": 0.0},
        "comparison": [
            compared("answers/rouge_l", 0.3, rouge),
            compared("answers/exact_match", 0.0, 0.0),
        ],
        "gates": {"answers/rouge_l max_drop": {"passed": True, "detail": "within 0.02"}},
    }


def compared(metric: str, baseline: float, candidate: float) -> dict[str, Any]:
    """A comparison row as apply records it (interval around the difference)."""
    difference = candidate - baseline
    return {
        "metric": metric,
        "baseline": baseline,
        "candidate": candidate,
        "difference": difference,
        "low": difference - 0.01,
        "high": difference + 0.01,
        "p_value": 0.5,
        "higher_is_better": True,
        "candidate_low": candidate - 0.01,
        "candidate_high": candidate + 0.01,
    }


def serving(version: str) -> dict[str, Any]:
    return {"version": version, "target": "local", "endpoint": "http://127.0.0.1:8000"}


@dataclass
class Repo:
    root: Path
    shas: dict[str, str]


class Git:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = 0
        root.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str, author: str = "alice") -> str:
        self.clock += 1
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": author,
            "GIT_AUTHOR_EMAIL": f"{author}@example.com",
            "GIT_COMMITTER_NAME": author,
            "GIT_COMMITTER_EMAIL": f"{author}@example.com",
            "GIT_AUTHOR_DATE": f"2025-03-{self.clock:02d}T10:00:00+00:00",
            "GIT_COMMITTER_DATE": f"2025-03-{self.clock:02d}T10:00:00+00:00",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(self.root),
        }
        done = subprocess.run(
            ["git", *args], cwd=self.root, env=env, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    def write(self, path: str, text: str) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text).lstrip())

    def lock(self, resources: dict[str, dict[str, Any]]) -> None:
        write_lock(self.root / LOCK_FILE, LockFile.model_validate({"resources": resources}))

    def commit(self, subject: str, author: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", subject, author=author)
        return self.git("rev-parse", "HEAD")


def build(root: Path) -> Repo:
    """main: alice sets up, erin edits data and the canary, bob's branch retrains (merged as
    PR #7 by carol), dave squash-merges the move to version 3 (#9), erin retires the canary."""
    git, shas = Git(root), {}
    git.write(
        "specs/deployments/assistants.yaml",
        DEPLOYMENTS.format(model="support-assistant@1", canary_port=8001),
    )
    git.write("specs/experiments/support-lora.yaml", EXPERIMENT.format(lr="2.0e-4"))
    resources = {
        "Model/smollm2": entry("Model", "a", {"version": "smollm2@1"}),
        "Dataset/support-faq": entry(
            "Dataset", "b", {"version": "sha256:11", "rows": {"train": 300}}
        ),
        "Experiment/support-lora/default": entry(
            "Experiment", "c", trained("support-assistant@1", 3.61), learning_rate=2e-4
        ),
        "Evaluation/support-lora/default": entry(
            "Evaluation", "d", evaluated("support-assistant@1", 0.31)
        ),
        "Deployment/support-assistant": entry(
            "Deployment", "e", serving("support-assistant@1"), model="support-assistant@1"
        ),
        "Deployment/support-canary": entry("Deployment", "f", serving("smollm2@1")),
    }
    git.lock(resources)
    shas["setup"] = git.commit("Support assistant: experiment and deployments", "alice")

    resources["Dataset/support-faq"] = entry(
        "Dataset", "1", {"version": "sha256:12", "rows": {"train": 311}}
    )
    git.lock(resources)
    shas["data"] = git.commit("More FAQ rows", "erin")
    git.write(
        "specs/deployments/assistants.yaml",
        DEPLOYMENTS.format(model="support-assistant@1", canary_port=8002),
    )
    shas["canary"] = git.commit("Canary on port 8002", "erin")

    git.git("checkout", "-q", "-b", "team/retrain")
    git.write("specs/experiments/support-lora.yaml", EXPERIMENT.format(lr="3.0e-4"))
    shas["spec"] = git.commit("Raise the learning rate", "bob")
    resources["Experiment/support-lora/default"] = entry(
        "Experiment", "2", trained("support-assistant@2", 3.46), learning_rate=3e-4
    )
    resources["Evaluation/support-lora/default"] = entry(
        "Evaluation", "3", evaluated("support-assistant@2", 0.36)
    )
    resources["Deployment/support-assistant"] = entry(
        "Deployment", "4", serving("support-assistant@2"), model="support-assistant@1"
    )
    git.lock(resources)
    shas["retrain"] = git.commit("Apply the retrained model", "bob")

    git.git("checkout", "-q", "main")
    git.write("README.md", "support platform\n")
    shas["readme"] = git.commit("Readme", "erin")
    git.git(
        "merge",
        "-q",
        "--no-ff",
        "team/retrain",
        "-m",
        "Merge pull request #7 from team/retrain",
        author="carol",
    )
    shas["merge"] = git.git("rev-parse", "HEAD")

    git.write(
        "specs/deployments/assistants.yaml",
        DEPLOYMENTS.format(model="support-assistant@3", canary_port=8002),
    )
    resources["Experiment/support-lora/lr-high"] = entry(
        "Experiment", "5", trained("support-assistant@3", 3.41), learning_rate=5e-4
    )
    resources["Evaluation/support-lora/lr-high"] = entry(
        "Evaluation", "6", evaluated("support-assistant@3", 0.38)
    )
    resources["Deployment/support-assistant"] = entry(
        "Deployment", "7", serving("support-assistant@3"), model="support-assistant@3"
    )
    git.lock(resources)
    shas["pin"] = git.commit("Serve support-assistant@3 from the lr-high run (#9)", "dave")

    text = (root / "specs/deployments/assistants.yaml").read_text()
    (root / "specs/deployments/assistants.yaml").write_text(text.split("---")[0])
    del resources["Deployment/support-canary"]
    git.lock(resources)
    shas["retire"] = git.commit("Retire the canary (#10)", "erin")
    return Repo(root, shas)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    return build(tmp_path_factory.mktemp("history") / "repo")


def llmops(repo: Path, *args: str) -> Result:
    return CliRunner().invoke(app, [*args, "--root", str(repo)])


def changes(repo: Repo, resource: str, *args: str) -> list[dict[str, Any]]:
    result = llmops(repo.root, resource, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["changes"]


def test_deployment_history_lists_its_changes_with_authors_and_prs(repo: Repo) -> None:
    found = changes(repo, "Deployment/support-assistant")
    shas = repo.shas
    # The data, canary, readme and spec-only commits do not touch this deployment.
    assert [c["commit"]["commit"] for c in found] == [shas["pin"], shas["retrain"], shas["setup"]]
    assert [c["commit"]["author"] for c in found] == ["dave", "bob", "alice"]
    assert [c["commit"]["pr"] for c in found] == [9, 7, None]
    assert found[1]["commit"]["merged_in"] == shas["merge"]
    assert found[0]["spec"] == [
        {
            "field": "spec.model",
            "change": "changed",
            "before": "support-assistant@1",
            "after": "support-assistant@3",
        }
    ]
    assert [c["served"]["version"] for c in found] == [
        "support-assistant@3",
        "support-assistant@2",
        "support-assistant@1",
    ]
    served = {e["address"]: e for e in found[1]["served"]["evidence"]}
    assert served["Experiment/support-lora/default"]["metrics"] == {"eval_loss": 3.46}
    assert served["Evaluation/support-lora/default"]["gates"] == {
        "answers/rouge_l max_drop": "pass"
    }


def test_history_in_the_terminal(repo: Repo) -> None:
    result = llmops(repo.root, "deployment/support-assistant")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Deployment/support-assistant (specs/deployments/assistants.yaml): 3 change(s)" in out
    assert f"{repo.shas['pin'][:7]}  2025-03-" in out
    assert "dave  PR #9  Serve support-assistant@3 from the lr-high run (#9)" in out
    assert f"bob  PR #7 (merged in {repo.shas['merge'][:7]})  Apply the retrained model" in out
    assert "  spec.model: support-assistant@1 -> support-assistant@3" in out
    assert "outputs.version: support-assistant@2 -> support-assistant@3" in out
    assert "serves support-assistant@2" in out
    assert "Experiment/support-lora/lr-high: eval_loss 3.41" in out
    assert (
        "Evaluation/support-lora/lr-high (support-regression): answers/exact_match 0, "
        "answers/rouge_l 0.38; gates answers/rouge_l max_drop pass"
    ) in out
    assert "alice  no PR  Support assistant: experiment and deployments" in out


def test_experiment_run_history_has_the_branch_spec_change(repo: Repo) -> None:
    found = changes(repo, "Experiment/support-lora/default")
    assert [c["commit"]["commit"] for c in found] == [
        repo.shas["retrain"],
        repo.shas["spec"],
        repo.shas["setup"],
    ]
    assert [c["commit"]["pr"] for c in found] == [7, 7, None]
    assert found[1]["spec"][0]["field"] == "spec.training.learning_rate"
    assert found[1]["entries"] == []  # the spec changed; the lock followed in the next commit
    lock = found[0]["entries"][0]
    assert lock["outputs"] == [
        {"field": "metrics.eval_loss", "change": "changed", "before": 3.61, "after": 3.46},
        {
            "field": "version",
            "change": "changed",
            "before": "support-assistant@1",
            "after": "support-assistant@2",
        },
    ]
    assert found[0]["evidence"][0]["metrics"] == {"eval_loss": 3.46}


def test_evaluation_history_in_the_terminal(repo: Repo) -> None:
    result = llmops(repo.root, "Evaluation/support-lora/default")
    assert result.exit_code == 0, result.output
    blocks = result.stdout.split("\n\n")
    retrain, spec = blocks[1], blocks[2]
    assert "outputs.subject: support-assistant@1 -> support-assistant@2" in retrain
    assert "outputs.comparison[0].candidate: 0.31 -> 0.36" in retrain
    assert "metrics Evaluation/support-lora/default (support-regression): " in retrain
    # The spec-only commit shows its field, not the older metrics still in the lock.
    assert "spec.training.learning_rate: 0.0002 -> 0.0003" in spec
    assert "metrics" not in spec


def test_a_document_sharing_a_file_and_later_deleted(repo: Repo) -> None:
    found = changes(repo, "support-canary")  # a bare name; gone at HEAD, found in history
    assert [(c["commit"]["commit"], c["commit"]["pr"]) for c in found] == [
        (repo.shas["retire"], 10),
        (repo.shas["canary"], None),
        (repo.shas["setup"], None),
    ]
    assert found[0]["spec_change"] == "deleted"
    assert found[0]["entries"][0]["change"] == "deleted"
    assert found[1]["spec"][0]["field"] == "spec.port"


@pytest.mark.parametrize(
    ("at", "version", "loss", "rouge"),
    [
        ("canary", "support-assistant@1", "3.61", "0.31"),
        ("spec", "support-assistant@1", "3.61", "0.31"),
        ("merge", "support-assistant@2", "3.46", "0.36"),
        ("HEAD", "support-assistant@3", "3.41", "0.38"),
    ],
)
def test_at_names_the_version_served_then_with_its_metrics(
    repo: Repo, at: str, version: str, loss: str, rouge: str
) -> None:
    rev = repo.shas.get(at, at)
    result = llmops(repo.root, "Deployment/support-assistant", "--at", rev[:10])
    assert result.exit_code == 0, result.output
    assert f"serves {version}\n" in result.stdout
    assert f"eval_loss {loss}" in result.stdout
    assert f"answers/rouge_l {rouge}; gates answers/rouge_l max_drop pass" in result.stdout
    payload = json.loads(
        llmops(repo.root, "Deployment/support-assistant", "--at", rev, "--json").stdout
    )
    assert payload["served"]["version"] == version


def test_at_head_says_which_change_put_it_there(repo: Repo) -> None:
    payload = json.loads(
        llmops(repo.root, "Deployment/support-assistant", "--at", "HEAD", "--json").stdout
    )
    assert payload["last_change"]["commit"]["commit"] == repo.shas["pin"]
    assert payload["commit"]["commit"] == repo.shas["retire"]
    text = llmops(repo.root, "Deployment/support-assistant", "--at", "HEAD~1").stdout
    assert f"last changed in {repo.shas['pin'][:7]} by dave" in text
    assert ", PR #9: Serve support-assistant@3" in text


def test_limit_keeps_the_newest(repo: Repo) -> None:
    found = changes(repo, "Deployment/support-assistant", "--limit", "1")
    assert [c["commit"]["commit"] for c in found] == [repo.shas["pin"]]


def test_unknown_resource_exits_2_with_did_you_mean(repo: Repo) -> None:
    result = llmops(repo.root, "Deployment/support-asistant")
    assert result.exit_code == 2
    assert "no resource 'Deployment/support-asistant'" in result.stderr
    assert "did you mean 'Deployment/support-assistant'?" in result.stderr
    assert "Traceback" not in result.output


def test_unknown_commit_exits_2(repo: Repo) -> None:
    result = llmops(repo.root, "Deployment/support-assistant", "--at", "no-such-branch")
    assert result.exit_code == 2
    assert "unknown commit 'no-such-branch'" in result.stderr


def test_not_a_git_repository_exits_2(tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    result = llmops(tmp_path, "Deployment/support-assistant")
    assert result.exit_code == 2
    assert "is not in a git repository" in result.stderr


def test_specs_in_a_subfolder_of_the_repository(tmp_path: Path) -> None:
    git = Git(tmp_path)
    git.write("platform/specs/deployments/a.yaml", DEPLOYMENTS.format(model="x@1", canary_port=1))
    write_lock(
        tmp_path / "platform" / LOCK_FILE,
        LockFile.model_validate(
            {
                "resources": {
                    "Deployment/support-assistant": entry("Deployment", "9", serving("x@1"))
                }
            }
        ),
    )
    sha = git.commit("Platform in a subfolder (#3)", "alice")
    result = llmops(tmp_path / "platform", "Deployment/support-assistant", "--json")
    assert result.exit_code == 0, result.output
    [change] = json.loads(result.stdout)["changes"]
    assert (change["commit"]["commit"], change["commit"]["pr"]) == (sha, 3)
    assert change["spec_file"] == "specs/deployments/a.yaml"
    assert change["served"]["version"] == "x@1"


def test_an_unreadable_lock_in_history_is_a_warning(tmp_path: Path) -> None:
    git = Git(tmp_path)
    git.write("specs/deployments/a.yaml", DEPLOYMENTS.format(model="x@1", canary_port=1))
    web = {"Deployment/support-assistant": entry("Deployment", "1", serving("x@1"))}
    git.lock(web)
    first = git.commit("Deploy x@1", "alice")
    (tmp_path / LOCK_FILE).write_text("{ not json")
    broken = git.commit("Bad merge of the lock", "bob")
    web = {"Deployment/support-assistant": entry("Deployment", "2", serving("x@2"))}
    git.lock(web)
    fixed = git.commit("Deploy x@2 (#4)", "alice")
    result = llmops(tmp_path, "Deployment/support-assistant", "--json")
    assert result.exit_code == 0, result.output
    assert f"warning: {broken[:7]}: llmops.lock is unusable (line 1: invalid JSON" in result.stderr
    found = json.loads(result.stdout)["changes"]
    assert [(c["commit"]["commit"], c["entries"][0]["change"]) for c in found] == [
        (fixed, "created"),
        (broken, "deleted"),
        (first, "created"),
    ]
