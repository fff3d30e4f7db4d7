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


def test_layers_contract_catches_upward_imports_at_top_level_and_inside_functions(
    tmp_path: Path,
) -> None:
    for name in ("controller", "runners"):
        shutil.copytree(
            PROJECT_ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    # observe sits below apply: a module-level import of the apply engine is upward.
    (tmp_path / "controller" / "observe" / "upward.py").write_text(
        "from controller.apply.engine import Applier\n"
    )
    # state sits below the CLI: hiding the import inside a function does not hide it.
    (tmp_path / "controller" / "state" / "hidden.py").write_text(
        "def later() -> None:\n    from controller.cli import main  # noqa: F401\n"
    )
    result = lint(tmp_path)
    assert result.returncode != 0
    out = result.stdout
    assert "Controller layers: each imports only the layers below it BROKEN" in out
    assert "controller.observe.upward -> controller.apply.engine" in out
    assert "controller.state.hidden -> controller.cli" in out
