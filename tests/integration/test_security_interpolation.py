"""Issue 27, class 2: OmegaConf interpolation in Experiments and presets must not read the
environment, and a secret must not reach plans or llmops.lock through composition."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.load.desired import load_desired
from controller.state.lockfile import lock_from_desired, render_lock, write_lock

# Token-shaped, as a GitHub token in a CI job's environment would be.
SECRET = "ghp_" + "Q7x" * 12 + "k9"
# The plan shortens long values; this prefix is shown either way.
SHOWN = SECRET[:16]
VARIANT = "r16: {training.lora.r: 16}"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LLMOPS_DEBUG", "LLMOPS_ROOT", "LLMOPS_STATE_DIR", "LLMOPS_REGISTRY_URL")
    }
    env["LEAKME"] = SECRET
    return subprocess.run(
        [sys.executable, "-m", "controller.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.fixture
def repo(make_repo: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository applied once (its lock in sync), then an Experiment edit to plan."""
    monkeypatch.setenv("LEAKME", SECRET)
    root = make_repo()
    write_lock(root / "llmops.lock", lock_from_desired(load_desired(root).desired))
    return root


def edit_variant(root: Path, new: str) -> int:
    """Replace the r16 variant line; return its 1-based line number."""
    path = root / "specs/experiments/exp.yaml"
    lines = path.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if VARIANT in line)
    lines[index] = lines[index].replace(VARIANT, new)
    path.write_text("\n".join(lines) + "\n")
    return index + 1


def assert_nothing_leaks(root: Path) -> None:
    plan = cli("plan", "--json", cwd=root)
    assert SHOWN not in plan.stdout + plan.stderr, "the plan shows the environment's secret"
    loaded = load_desired(root)
    if loaded.ok:  # what apply would record in llmops.lock for these specs
        assert SHOWN not in render_lock(lock_from_desired(loaded.desired))


def test_env_resolver_in_a_variant_is_refused_and_never_resolved(repo: Path) -> None:
    line = edit_variant(
        repo, 'r16: {training.lora.r: 16, training.lora.target_modules: ["${oc.env:LEAKME}"]}'
    )
    assert_nothing_leaks(repo)
    result = cli("validate", "--json", cwd=repo)
    assert result.returncode == 2, result.stdout + result.stderr
    assert SHOWN not in result.stdout + result.stderr
    found = [
        d
        for d in json.loads(result.stdout)["diagnostics"]
        if "resolver" in d["message"] and d["file"] == "specs/experiments/exp.yaml"
    ]
    assert found, result.stdout
    assert found[0]["line"] == line
    assert "spec.variants.r16" in found[0]["path"]
    assert "oc.env" in found[0]["message"]


def test_env_resolver_in_a_preset_is_refused_at_the_preset_line(
    make_repo: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEAKME", SECRET)
    root = make_repo(
        {
            "specs/experiments/_presets/training/leaky.yaml": """
            method: lora
            lora:
              target_modules: ["${oc.env:LEAKME,q_proj}"]
            """,
        }
    )
    path = root / "specs/experiments/exp.yaml"
    path.write_text(path.read_text().replace("spec:\n", "spec:\n  defaults: [{training: leaky}]\n"))
    assert_nothing_leaks(root)
    result = cli("validate", cwd=root)
    assert result.returncode == 2, result.stdout + result.stderr
    assert re.search(
        r"specs/experiments/_presets/training/leaky\.yaml:3:\d+: error:", result.stderr
    )
    assert "lora.target_modules" in result.stderr
    assert SHOWN not in result.stdout + result.stderr


def test_env_resolver_in_a_command_line_override_is_refused(repo: Path) -> None:
    result = cli(
        "plan", "--json", "-o", "exp:training.lora.target_modules=[${oc.env:LEAKME}]", cwd=repo
    )
    assert SHOWN not in result.stdout + result.stderr
    assert result.returncode == 2, result.stdout + result.stderr
    assert "resolver" in result.stdout + result.stderr


def test_secret_arriving_by_plain_interpolation_is_caught_after_resolving(
    make_repo: Callable[..., Path],
) -> None:
    """A preset is not scanned as a spec file; its secret reaches the run by reference."""
    root = make_repo(
        {
            "specs/experiments/_presets/training/keyed.yaml": f"""
            method: lora
            lora:
              target_modules: ["{SECRET}"]
            """,
        }
    )
    path = root / "specs/experiments/exp.yaml"
    path.write_text(path.read_text().replace("spec:\n", "spec:\n  defaults: [{training: keyed}]\n"))
    assert_nothing_leaks(root)
    result = cli("validate", cwd=root)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "GitHub token" in result.stderr
    assert SHOWN not in result.stdout + result.stderr


def test_plain_references_still_resolve(make_repo: Callable[..., Path]) -> None:
    root = make_repo()
    path = root / "specs/experiments/exp.yaml"
    path.write_text(
        path.read_text().replace(
            VARIANT, 'r16: {training.lora.r: 16, training.lora.alpha: "${training.lora.r}"}'
        )
    )
    loaded = load_desired(root)
    assert loaded.ok, [d.render() for d in loaded.diagnostics]
    r16 = next(r for r in loaded.runs["exp"] if r.name == "r16")
    assert r16.config["training"]["lora"]["alpha"] == 16
