"""Layering is enforced by import-linter contracts in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_contracts_hold() -> None:
    result = lint(PROJECT_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_contracts_catch_a_runner_importing_the_controller(tmp_path: Path) -> None:
    for name in ("controller", "runners"):
        shutil.copytree(
            PROJECT_ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "runners" / "sneaky.py").write_text("from controller.plan import planner\n")
    (tmp_path / "controller" / "plan" / "leaky.py").write_text("import subprocess\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "Runners never import the controller BROKEN" in result.stdout
    assert "Planning is pure" in result.stdout and "2 broken" in result.stdout
