"""The import rule (docs/architecture.md, Imports): starting the CLI loads no heavy module."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

from tests.conftest import PROJECT_ROOT


def heavy_modules() -> list[str]:
    """The third-party modules pyproject.toml names as heavy (imported only where used)."""
    config = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    banned = config["tool"]["ruff"]["lint"]["flake8-tidy-imports"]["banned-module-level-imports"]
    return [m for m in banned if not m.startswith(("controller.", "runners."))]


def loaded_by(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def test_the_heavy_list_names_what_the_runners_use() -> None:
    heavy = heavy_modules()
    assert {"torch", "transformers", "kubernetes", "fastapi", "numpy"} <= set(heavy)


def test_starting_the_cli_loads_no_heavy_module() -> None:
    loaded = loaded_by("import controller.cli.main")
    found = sorted(m for m in heavy_modules() if m in loaded)
    assert not found, f"`llmops` loads {found} at start; import them where they are used"


def test_the_check_sees_a_heavy_import() -> None:
    # The same check on a statement that does load one: the test above can fail.
    loaded = loaded_by("import controller.cli.main\nimport runners.arena.ratings")
    assert "numpy" in loaded and "scipy" in loaded
