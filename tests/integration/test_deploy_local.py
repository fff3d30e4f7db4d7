"""Local target rollouts with the real runtime: a version that fails its check never takes
traffic (the old one keeps serving), and one that fails after the switch is rolled back.
The public port is shared only between versions of one deployment from one state folder:
another state folder's deployment or any other program there is a clear error, both before
anything starts and in the runtime itself when it binds."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from runners.deploy import local
from runners.deploy.release import DeployError
from runners.serve import ports
from tests.serving import steady_traffic
from tests.tiny import make_mute_model

KEY_ENV = "LLMOPS_TEST_PORT_KEY"


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


@pytest.fixture
def claims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Port claims of this test only (the runtimes it starts inherit the variable)."""
    folder = tmp_path / "claims"
    monkeypatch.setenv(ports.CLAIMS_ENV, str(folder))
    return folder


def wait_answered(traffic: Any, at_least: int, timeout_s: float = 60) -> None:
    give_up = time.monotonic() + timeout_s
    while traffic.answered < at_least and time.monotonic() < give_up:
        time.sleep(0.1)


def test_two_state_folders_never_share_a_port(
    tiny_model: Path, tmp_path: Path, claims: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two checkouts of one repository deploy 'assistant' to one port: the second fails,
    naming the first's state folder and pid, and the first serves every request meanwhile."""
    first_folder = tmp_path / "checkout-a/.llmops/deployments/assistant"
    second_folder = tmp_path / "checkout-b/.llmops/deployments/assistant"
    public = local.free_port()
    config = {**runtime_config(tiny_model, "assistant@1", public), "api_key_env": KEY_ENV}
    first, _ = local.rollout(
        "assistant", "assistant@1", config, first_folder, {KEY_ENV: "sk-first"}, "digest-1"
    )
    try:
        expected = (
            f"port 127.0.0.1:{public} is already in use by deployment assistant "
            f"(state folder {first_folder.resolve()}, pid {first.pid}); this deployment's "
            f"state folder is {second_folder.resolve()}. A port is shared only between "
            "versions of one deployment during a rollout: set another port in Deployment "
            "assistant's spec, or stop the other deployment"
        )
        with steady_traffic(public, "sk-first", "assistant") as traffic:
            wait_answered(traffic, 2)
            # Refused before anything starts.
            with pytest.raises(DeployError) as refused:
                local.rollout(
                    "assistant",
                    "assistant@1",
                    config,
                    second_folder,
                    {KEY_ENV: "sk-second"},
                    "digest-1",
                )
            assert str(refused.value) == f"assistant: cannot start assistant@1: {expected}"
            assert local.current(second_folder) is None
            # Past that check (a start racing the first one's), the runtime refuses to bind.
            with monkeypatch.context() as patched, pytest.raises(DeployError) as raced:
                patched.setattr(local.ports, "check", lambda *args: None)
                local.rollout(
                    "assistant",
                    "assistant@1",
                    config,
                    second_folder,
                    {KEY_ENV: "sk-second"},
                    "digest-1",
                )
            assert str(raced.value) == f"assistant: assistant@1 did not start: {expected}"
            answered = traffic.answered
            wait_answered(traffic, answered + 2)
        assert traffic.failures == [] and traffic.answered > answered
        assert ports.listener_pids(public) == [first.pid]
        assert local.current(second_folder) is None

        # A new version of the same deployment still takes the port over, without a failure.
        with steady_traffic(public, "sk-first", "assistant") as traffic:
            wait_answered(traffic, 2)
            second, happened = local.rollout(
                "assistant",
                "assistant@2",
                {**config, "model_version": "assistant@2"},
                first_folder,
                {KEY_ENV: "sk-first"},
                "digest-2",
            )
            wait_answered(traffic, traffic.answered + 2)
        assert happened == "replaced" and traffic.failures == [] and traffic.answered > 0
        assert ports.listener_pids(public) == [second.pid]
        claim = ports.live_claim("127.0.0.1", public)
        assert claim is not None and claim.live() == [second.pid]
    finally:
        local.stop(first_folder)
    # The last process of a deployment leaves no claim behind.
    assert ports.read_claim("127.0.0.1", public) is None


@pytest.mark.parametrize("reuse_port", [True, False], ids=["SO_REUSEPORT", "plain"])
def test_another_program_on_the_port_is_never_joined(
    tiny_model: Path,
    tmp_path: Path,
    claims: Path,
    monkeypatch: pytest.MonkeyPatch,
    reuse_port: bool,
) -> None:
    """A socket that is not llmops holds the port, even one that would let us join it."""
    folder = tmp_path / "deployment"
    public = local.free_port()
    config = runtime_config(tiny_model, "assistant@1", public)
    with socket.socket() as other:
        if reuse_port:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", public))
        other.listen()
        with pytest.raises(DeployError) as refused:
            local.rollout("assistant", "assistant@1", config, folder, {}, "digest-1")
        message = str(refused.value)
        assert message.startswith(
            f"assistant: cannot start assistant@1: port 127.0.0.1:{public} is already in use "
            f"by another program (pid {os.getpid()}: "
        ), message
        assert message.endswith(
            "), not an llmops deployment. A port is shared only between versions of one "
            "deployment during a rollout: set another port in Deployment assistant's spec, "
            "or stop that program"
        ), message
        assert local.current(folder) is None and not list(folder.glob("serve-*.log"))
        if reuse_port:
            # Past that check the runtime itself refuses: it never joins with SO_REUSEPORT.
            monkeypatch.setattr(local.ports, "check", lambda *args: None)
            with pytest.raises(DeployError, match=r"did not start: port .* another program"):
                local.rollout("assistant", "assistant@1", config, folder, {}, "digest-1")
        assert ports.listener_pids(public) == [os.getpid()]
        assert local.current(folder) is None
