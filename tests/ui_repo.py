"""A tiny repository for the dashboard's tests: tests/apply_repo.py's repository with a second
experiment run, a brain scan, an arena with a scripted judge and an unapplied deployment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.apply_repo import build_repo, git
from tests.conftest import PROJECT_ROOT
from tests.tiny import add_duel_contenders, duel_arena

ARENA = duel_arena(limit=6, battles=4, rounds=100)

EXTRA = """  variants:
    faster: {training.learning_rate: 3.0e-3}
  inspect: {probes: data/probes.txt, top_k: 3}
"""


def build_ui_repo(root: Path, tiny_model: Path) -> Path:
    """The repository, committed in two commits (so history has a timeline)."""
    build_repo(root, tiny_model, deploy_port=None)
    add_duel_contenders(tiny_model, root)
    (root / "specs/arenas").mkdir(parents=True, exist_ok=True)
    (root / "specs/arenas/duel.yaml").write_text(ARENA)
    experiment = root / "specs/experiments/exp.yaml"
    experiment.write_text(experiment.read_text() + EXTRA)
    (root / "data/probes.txt").write_text(
        "\n".join((PROJECT_ROOT / "data/support-faq/probes.txt").read_text().splitlines()[:2])
        + "\n"
    )
    (root / "specs/deployments").mkdir(parents=True, exist_ok=True)
    (root / "specs/deployments/assistant.yaml").write_text(
        "apiVersion: llmops/v1\nkind: Deployment\nmetadata: {name: assistant}\n"
        "spec:\n  model: assistant@champion\n  target: local\n  port: 18431\n"
    )
    git(root, "add", "-A")
    git(root, "commit", "-qm", "arena, variant, scan and deployment")
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_environment(**extra: str) -> dict[str, str]:
    """This process's environment without llmops settings (a test's state folder, root or
    registry must not leak into the server), plus `extra`."""
    kept = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LLMOPS_") or k == "LLMOPS_TEST_ARTIFACTS"
    }
    return {**kept, "PYTHONPATH": str(PROJECT_ROOT), **extra}


@contextmanager
def dashboard_server(
    root: Path, env: dict[str, str] | None = None, ready: str = "/static/app.css"
) -> Iterator[str]:
    """`llmops ui` as a real process on a free loopback port over `root`; yields its URL once
    `ready` answers, and stops it afterwards."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "controller.cli.main", "ui", "--port", str(port)],
        cwd=root,
        env=env or server_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(url + ready, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.terminate()
                said = process.stdout.read() if process.stdout else ""
                raise AssertionError(f"llmops ui did not start: {said}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
