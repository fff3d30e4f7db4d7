"""What runtimes see of the apply environment: the minimal environment local runtimes and
training get, the container environment the docker target asks the engine for, and when a
key may go to a container engine on another machine."""

from __future__ import annotations

from typing import Any

import pytest

from controller.api.deployment import DeploymentSpec
from runners.deploy import docker_engine, environment
from runners.deploy.release import DeployError, Release, container_config

APPLY_ENV = {
    "PATH": "/usr/bin",
    "HOME": "/home/ci",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "OMP_NUM_THREADS": "2",
    "HF_HUB_OFFLINE": "1",
    "CUDA_VISIBLE_DEVICES": "0",
    "VIRTUAL_ENV": "/opt/venv",
    "GITHUB_TOKEN": "canary-github",
    "AWS_SECRET_ACCESS_KEY": "canary-aws",
    "AWS_ACCESS_KEY_ID": "canary-aws-id",
    "AZURE_CLIENT_SECRET": "canary-azure",
    "HF_TOKEN": "canary-hf",
    "LLMOPS_KEY_OTHER": "canary-other-deployment",
    "LLMOPS_REGISTRY_URL": "postgresql://user:canary@db/llmops",
    "ACTIONS_RUNTIME_TOKEN": "canary-actions",
}
CANARIES = {k for k, v in APPLY_ENV.items() if "canary" in v}


def release(**fields: Any) -> Release:
    spec = DeploymentSpec(model="support-assistant@champion", **fields).model_dump()
    return Release("support-assistant", "support-assistant@2", spec, ["Hi"])


def test_minimal_environment_keeps_what_runtimes_need_and_no_credential() -> None:
    env = environment.minimal({"LLMOPS_SERVE_API_KEY": "sk-1"}, environ=APPLY_ENV)
    assert not CANARIES & env.keys()
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/ci",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "2",
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "0",
        "VIRTUAL_ENV": "/opt/venv",
        "LLMOPS_SERVE_API_KEY": "sk-1",
    }
    # A program that reads a variable of its own names it.
    kept = environment.minimal(keep=["LLMOPS_FAULT_KILL"], environ={"LLMOPS_FAULT_KILL": "x"})
    assert kept == {"LLMOPS_FAULT_KILL": "x"}


def test_the_container_gets_only_the_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in APPLY_ENV.items():
        monkeypatch.setenv(name, value)
    rel = release(api_key={"env": "LLMOPS_KEY_SUPPORT"}, port=8123)
    key_env = container_config(rel, "docker")["api_key_env"]
    args = docker_engine.run_args("podman", rel, "llmops/support:2", {key_env: "sk-1"})
    passed = [args[i + 1] for i, arg in enumerate(args) if arg in ("-e", "--env")]
    assert passed == ["LLMOPS_KEY_SUPPORT"]
    assert not any(a.startswith(("--env-host", "--env-file")) for a in args)
    assert "sk-1" not in " ".join(args)  # the value travels in the engine's environment
    assert docker_engine.run_args("podman", release(port=8123), "t", {}).count("-e") == 0


@pytest.mark.parametrize(
    "host",
    [None, "unix:///run/user/1000/podman/podman.sock", "tcp://127.0.0.1:2375", "ssh://localhost"],
)
def test_a_key_may_go_to_this_machines_engine(host: str | None) -> None:
    environment.check_key_destination("support-assistant", host, environ={})


@pytest.mark.parametrize(
    "host", ["ssh://deploy@gpu-box/run/podman/podman.sock", "tcp://10.0.0.5:2375"]
)
def test_a_key_goes_to_another_machines_engine_only_when_the_operator_trusts_it(host: str) -> None:
    with pytest.raises(DeployError, match=environment.REMOTE_ENGINES_ENV) as refused:
        environment.check_key_destination("support-assistant", host, environ={})
    assert host in str(refused.value)
    trusted = {environment.REMOTE_ENGINES_ENV: f"tcp://other:2375, {host}"}
    environment.check_key_destination("support-assistant", host, environ=trusted)


def test_docker_run_refuses_a_remote_engine_before_reaching_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(environment.REMOTE_ENGINES_ENV, raising=False)
    rel = release(api_key={"env": "LLMOPS_KEY_SUPPORT"}, docker={"host": "tcp://10.0.0.5:2375"})

    def no_engine(*args: Any) -> Any:
        raise AssertionError("the engine was asked before the key's destination was checked")

    monkeypatch.setattr(docker_engine, "find_engine", no_engine)
    with pytest.raises(DeployError, match="another machine's engine"):
        docker_engine.run(rel, "t", {"LLMOPS_KEY_SUPPORT": "sk-1"}, host="tcp://10.0.0.5:2375")
