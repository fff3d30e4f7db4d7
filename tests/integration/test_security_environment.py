"""A runtime started through the local deploy path sees a minimal environment: the apply
environment's other variables (a CI token, cloud keys, other deployments' keys) never reach
the served process, while its own key does and guards the routes."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from controller.targets.local import SERVE_API_KEY_ENV, chat_check
from runners.deploy import local
from tests.integration.test_deploy_local import runtime_config

KEY = "sk-env-test-0123456789"
CANARIES = {
    "GITHUB_TOKEN": "canary-github-token",
    "AWS_SECRET_ACCESS_KEY": "canary-aws-secret",
    "AWS_ACCESS_KEY_ID": "canary-aws-id",
    "GOOGLE_APPLICATION_CREDENTIALS": "/canary/gcp.json",
    "HF_TOKEN": "canary-hf-token",
    "LLMOPS_KEY_OTHER_DEPLOYMENT": "canary-other-key",
    "CI_JOB_SECRET": "canary-ci",
}


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_local_runtime_gets_no_variable_of_the_apply_environment_but_its_key(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # an allowed tuning variable still passes
    folder = tmp_path / "deployment"
    public = local.free_port()
    config = {**runtime_config(tiny_model, "assistant@1", public), "api_key_env": SERVE_API_KEY_ENV}
    state, happened = local.rollout(
        "assistant",
        "assistant@1",
        config,
        folder,
        {SERVE_API_KEY_ENV: KEY},
        "digest-1",
        check=lambda port: chat_check(port, "assistant", KEY),
    )
    try:
        assert happened == "started"
        seen = environ_of(state.pid)
        leaked = sorted(name for name in CANARIES if name in seen)
        leaked += sorted(n for n, v in seen.items() if v in CANARIES.values())
        assert leaked == [], f"the served process inherited {leaked}"
        assert seen[SERVE_API_KEY_ENV] == KEY
        assert seen.get("OMP_NUM_THREADS") == "1"
        # The key works, and nothing else gets in.
        assert chat_check(public, "assistant", KEY) is None
        refused = httpx.post(
            f"http://127.0.0.1:{public}/v1/chat/completions",
            json={"model": "assistant", "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )
        assert refused.status_code == 401
    finally:
        local.stop(folder)
