"""The `llmops` command as users run it: exit codes, output, no tracebacks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

LLMOPS = [sys.executable, "-m", "controller.cli.main"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LLMOPS_DEBUG", "LLMOPS_ROOT")}
    return subprocess.run(
        [*LLMOPS, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """A copy of this repository's demo specs and data, as a user's checkout would have."""
    root = tmp_path / "demo"
    for folder in ("specs", "data", "schemas"):
        shutil.copytree(PROJECT_ROOT / folder, root / folder)
    return root


def test_validate_demo_repository_exits_0(demo: Path) -> None:
    result = run("validate", cwd=demo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid: 14 specs (1 Arena," in result.stdout


def test_misspelt_field_exits_2_with_position_and_hint(demo: Path) -> None:
    spec = demo / "specs/experiments/support-finetune.yaml"
    lines = spec.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if "learning_rate:" in line)
    lines[index] = lines[index].replace("learning_rate:", "learning_rat:")
    spec.write_text("\n".join(lines) + "\n")
    result = run("validate", cwd=demo)
    assert result.returncode == 2
    column = lines[index].index("learning_rat") + 1
    assert f"specs/experiments/support-finetune.yaml:{index + 1}:{column}" in result.stderr
    assert "spec.training.learning_rat" in result.stderr
    assert "did you mean 'learning_rate'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_validate_json_lists_diagnostics(demo: Path) -> None:
    (demo / "specs/models/bad.yaml").write_text("apiVersion: llmops/v1\nkind: Modle\n")
    result = run("validate", "--json", cwd=demo)
    assert result.returncode == 2
    payload = json.loads(result.stdout)
    assert payload["valid"] is False
    assert payload["diagnostics"][0]["hint"] == "did you mean 'Model'?"


def test_plan_json_then_lock_then_nothing_to_do(demo: Path) -> None:
    spec = demo / "specs/experiments/support-finetune.yaml"
    text = spec.read_text()
    assert "  control:" in text
    spec.write_text(
        text.replace(
            "  control:",
            "  variants:\n    lora:\n      training.learning_rate: 5.0e-4\n  control:",
            1,
        )
    )
    first = run("plan", "--json", cwd=demo)
    assert first.returncode == 3, first.stderr
    payload = json.loads(first.stdout)
    addresses = {a["address"] for a in payload["actions"]}
    assert {
        "Model/smollm2-135m-instruct",
        "Dataset/support-faq",
        "EvalSuite/support-regression",
        "Experiment/support-finetune/default",
        "Experiment/support-finetune/lora",
        "Deployment/support-assistant",
        "Pipeline/support-retrain",
    } <= addresses
    assert all(a["reason"] for a in payload["actions"])

    from controller.load.desired import load_desired
    from controller.state.lockfile import lock_from_desired, write_lock

    loaded = load_desired(demo)
    assert loaded.desired is not None
    write_lock(demo / "llmops.lock", lock_from_desired(loaded.desired))
    second = run("plan", cwd=demo)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Nothing to do" in second.stdout

    spec.write_text(
        spec.read_text().replace("training.learning_rate: 5.0e-4", "training.learning_rate: 4.0e-4")
    )
    third = run("plan", "--json", cwd=demo)
    assert third.returncode == 3
    pending = {
        a["address"]: a for a in json.loads(third.stdout)["actions"] if a["action"] != "noop"
    }
    assert set(pending) == {"Experiment/support-finetune/lora", "Evaluation/support-finetune/lora"}
    assert pending["Experiment/support-finetune/lora"]["action"] == "retrain"
    assert (
        "training.learning_rate: 0.0005 -> 0.0004"
        in (pending["Experiment/support-finetune/lora"]["reason"])
    )


def test_plan_override_on_the_command_line(demo: Path) -> None:
    result = run("plan", "--json", "-o", "support-finetune:training.seed=3", cwd=demo)
    assert result.returncode == 3
    result = run("plan", "-o", "training.sed=3", cwd=demo)
    assert result.returncode == 2
    assert "did you mean 'seed'" in result.stderr


def test_corrupt_lock_file_is_a_diagnostic(demo: Path) -> None:
    (demo / "llmops.lock").write_text('{"lockVersion": 1, "resources": {\n  "x": \n}')
    result = run("plan", cwd=demo)
    assert result.returncode == 2
    assert "llmops.lock:3:1: error: invalid JSON" in result.stderr
    assert "git checkout -- llmops.lock" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_a_single_file(demo: Path) -> None:
    result = run("validate", "specs/models/smollm2-135m-instruct.yaml", cwd=demo)
    assert result.returncode == 0, result.stderr
    result = run("validate", "specs/nope.yaml", cwd=demo)
    assert result.returncode == 2
    assert "no such file" in result.stderr


def test_unexpected_errors_print_no_traceback(make_repo: Callable[..., Path]) -> None:
    root = make_repo()
    (root / "specs/models/base.yaml").chmod(0o000)
    result = run("validate", cwd=root)
    (root / "specs/models/base.yaml").chmod(0o644)
    assert "Traceback" not in result.stderr
    if os.geteuid() != 0:  # root reads anything; elsewhere the file is unreadable
        assert result.returncode == 2
        assert "cannot read file" in result.stderr


def test_schemas_check(tmp_path: Path) -> None:
    result = run("schemas", "--check", "--root", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert "stale schemas" in result.stderr
    assert run("schemas", "--root", str(tmp_path), cwd=tmp_path).returncode == 0
    assert run("schemas", "--check", "--root", str(tmp_path), cwd=tmp_path).returncode == 0
