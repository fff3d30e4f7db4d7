"""`llmops doctor` run for real, as a user runs it: the JSON list of checks, exit 0 on this
machine, exit 1 with the fix when the state folder cannot be written or the registry URL is
bad, and the table for people."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import PROJECT_ROOT

CHECKS = [
    "python",
    "llmops",
    "torch",
    "transformers",
    "peft",
    "lm-eval",
    "trl",
    "torch device",
    "state folder",
    "registry",
    "blob store",
    "artifact store",
    "container engine",
    "kube context",
    "llama.cpp backend",
    "chromium",
]


def doctor(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "LLMOPS_REGISTRY_URL"}
    environment.update(env)
    environment["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "doctor", "--root", str(tmp_path), *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )


def by_check(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    for row in rows:
        assert set(row) == {"check", "status", "detail", "fix"}, row
        assert row["status"] in ("ok", "warning", "missing")
        assert row["detail"]
        # Whatever is not ok says what to do.
        assert (row["status"] == "ok") == (row["fix"] == ""), row
    return {row["check"]: row for row in rows}


def test_doctor_json_lists_every_check_and_passes_here(tmp_path: Path) -> None:
    result = doctor(tmp_path, "--json", LLMOPS_STATE_DIR=str(tmp_path / "state"))
    checks = by_check(result)
    assert list(checks) == CHECKS
    # The test suite runs on what llmops requires: nothing is missing here.
    assert result.returncode == 0, result.stdout
    assert {checks[name]["status"] for name in CHECKS[:3]} == {"ok"}
    assert checks["python"]["detail"] == "Python " + ".".join(map(str, sys.version_info[:3]))
    assert checks["state folder"]["detail"].startswith(f"{tmp_path / 'state'} (created by")
    assert "GiB free" in checks["state folder"]["detail"]
    assert checks["registry"]["detail"].endswith("not created yet (the first apply does)")
    assert not (tmp_path / "state").exists()  # the doctor looks; it creates nothing


def test_a_state_folder_that_cannot_be_written_exits_1_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder\n")
    blocked = tmp_path / "a-file" / "state"
    result = doctor(tmp_path, "--json", LLMOPS_STATE_DIR=str(blocked))
    assert result.returncode == 1
    checks = by_check(result)
    state = checks["state folder"]
    assert state["status"] == "missing"
    assert state["detail"].startswith(f"{blocked} (created by the first apply) is not writable")
    assert state["fix"] == (
        "set LLMOPS_STATE_DIR to a folder you can write, or fix the folder's permissions"
    )
    assert checks["registry"]["status"] == "missing"
    assert checks["blob store"]["status"] == "missing"


def test_a_bad_registry_url_exits_1(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    result = doctor(tmp_path, "--json", LLMOPS_STATE_DIR=state, LLMOPS_REGISTRY_URL="registry")
    assert result.returncode == 1
    registry = by_check(result)["registry"]
    assert registry["status"] == "missing"
    assert registry["detail"].startswith("registry (LLMOPS_REGISTRY_URL): not a database URL")
    assert "postgresql+psycopg://user@host/db" in registry["fix"]

    # A well-formed URL whose database does not answer (nothing listens on port 1).
    down = "postgresql://llmops:secret@127.0.0.1:1/llmops"
    result = doctor(tmp_path, "--json", LLMOPS_STATE_DIR=state, LLMOPS_REGISTRY_URL=down)
    assert result.returncode == 1
    registry = by_check(result)["registry"]
    assert registry["status"] == "missing" and "secret" not in registry["detail"]
    assert "Connection refused" in registry["detail"]


def test_the_table_for_people(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    result = doctor(tmp_path, LLMOPS_STATE_DIR=str(tmp_path / "a-file" / "state"))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "check" in line and "status" in line)
    assert [w for w in header.replace("┃", " ").split()] == ["check", "status", "detail", "fix"]
    state = next(line for line in lines if "state folder" in line)
    assert "missing" in state and "set LLMOPS_STATE_DIR to a folder you can write" in state
    assert any("python" in line and " ok " in line for line in lines)
