"""Local target rollouts with the real runtime: a version that fails its check never takes
traffic (the old one keeps serving), and one that fails after the switch is rolled back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runners.deploy import local
from runners.deploy.release import DeployError
from tests.tiny import make_mute_model


def runtime_config(model_dir: Path, version: str, public_port: int) -> dict[str, Any]:
    return {
        "name": "assistant",
        "model_version": version,
        "model_dir": str(model_dir),
        "host": "127.0.0.1",
        "public_port": public_port,
        "smoke": {"prompts": ["Hello!"], "max_tokens": 4},
    }


@pytest.fixture
def mute_model(tiny_model: Path, tmp_path: Path) -> Path:
    """Loads, but answers every prompt with nothing: its smoke check fails."""
    return make_mute_model(tiny_model, tmp_path / "mute")


def test_failed_new_version_never_replaces_the_serving_one(
    tiny_model: Path, mute_model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "deployment"
    public = local.free_port()
    first, happened = local.rollout(
        "assistant",
        "assistant@1",
        runtime_config(tiny_model, "assistant@1", public),
        folder,
        {},
        "digest-1",
    )
    try:
        assert happened == "started" and local.is_ready(public)
        again, happened = local.rollout(
            "assistant",
            "assistant@1",
            runtime_config(tiny_model, "assistant@1", public),
            folder,
            {},
            "digest-1",
        )
        assert happened == "unchanged" and again.pid == first.pid

        # Smoke check fails in the new process: it exits 3 before it is ready.
        with pytest.raises(
            DeployError, match=r"assistant@2 exited with code 3 before it was ready"
        ):
            local.rollout(
                "assistant",
                "assistant@2",
                runtime_config(mute_model, "assistant@2", public),
                folder,
                {},
                "digest-2",
            )
        assert local.current(folder).pid == first.pid and local.is_ready(public)

        # Ready, but its check after the switch fails: the previous version is started again.
        def check(port: int) -> str | None:
            return "wrong answers" if port == public else None

        with pytest.raises(DeployError, match="rolled back to assistant@1"):
            local.rollout(
                "assistant",
                "assistant@3",
                runtime_config(tiny_model, "assistant@3", public),
                folder,
                {},
                "digest-3",
                check=check,
            )
        restored = local.current(folder)
        assert restored is not None and restored.version == "assistant@1"
        assert restored.pid != first.pid and not local.is_serving_process(first.pid)
        assert local.is_ready(public)
    finally:
        stopped = local.stop(folder)
        assert stopped is not None and not local.is_serving_process(stopped.pid)
