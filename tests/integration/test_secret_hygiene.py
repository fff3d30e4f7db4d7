"""No secret value leaves the environment: a token planted where a deployment's api_key points
(and in a .env file beside the specs, and in the usual token variables) appears in no file
apply, a served request, report and status write under the repository or its state folder,
and in none of their output."""

from __future__ import annotations

import json
import os
import secrets
import signal
from pathlib import Path

import httpx
import pytest

from runners.deploy.local import free_port, is_serving_process
from tests.apply_repo import API_KEY_ENV, build_repo
from tests.integration.test_apply import llmops

TOKEN = "sk-planted-" + secrets.token_hex(16)


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        monkeypatch.delenv(name, raising=False)
    for name in (API_KEY_ENV, "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "GITHUB_TOKEN"):
        monkeypatch.setenv(name, TOKEN)
    port = free_port()
    root = build_repo(tmp_path / "repo", tiny_model, deploy_port=port)
    (root / ".env").write_text(f"{API_KEY_ENV}={TOKEN}\n")  # beside the specs, untracked
    yield root, port
    for state in (root / ".llmops/deployments").glob("*/state.json"):
        pid = json.loads(state.read_text())["pid"]
        if is_serving_process(pid):
            os.kill(pid, signal.SIGKILL)


def files_holding(root: Path, needle: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.name != ".env":
            try:
                if needle in path.read_bytes():
                    found.append(str(path.relative_to(root)))
            except OSError:
                continue
    return found


def test_planted_token_appears_in_no_output(repo: tuple[Path, int]) -> None:
    root, port = repo
    outputs = []
    applied = llmops(root, "apply", "--json")
    outputs.append(applied)
    assert applied.returncode == 0, applied.stderr
    base = f"http://127.0.0.1:{port}/v1"
    ok = httpx.post(
        f"{base}/chat/completions",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={"model": "assistant", "messages": [{"role": "user", "content": f"hi {TOKEN[:4]}"}]},
        timeout=60,
    )
    assert ok.status_code == 200
    wrong = httpx.post(
        f"{base}/chat/completions",
        headers={"Authorization": f"Bearer {TOKEN}x"},
        json={"model": "assistant", "messages": [{"role": "user", "content": "hi"}]},
        timeout=60,
    )
    assert wrong.status_code == 401 and TOKEN not in wrong.text
    report = ("report", "--base", "HEAD", "--output", "report.md")
    for args in (report, ("report", "--base", "HEAD"), ("status", "--json"), ("plan",)):
        outputs.append(llmops(root, *args))
    for done in outputs:
        assert TOKEN not in done.stdout and TOKEN not in done.stderr
    assert (root / "report.md").exists() and (root / "llmops.lock").exists()
    assert list((root / ".llmops").rglob("*.md")), "model cards are written"
    assert files_holding(root, TOKEN.encode()) == []
