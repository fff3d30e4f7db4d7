"""A Deployment's named clients on each target: the runtime config names each client's key
variable and quotas (never a key), KServe mounts secret keys into those variables, docker
passes the spec's variables through, and specs without clients render what they did before."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller.api.deployment import DeploymentSpec
from runners.deploy.docker_context import run_command
from runners.deploy.kserve_manifests import render_manifests
from runners.deploy.release import DeployError, Release, client_key_env, container_config
from runners.serve.config import parse_config

KSERVE = {"namespace": "llm", "storage_uri": "pvc://llmops-models/support-assistant/2"}


def release(target: str, clients: list[dict[str, Any]], **fields: Any) -> Release:
    spec = DeploymentSpec(
        model="support-assistant@champion", target=target, kserve=KSERVE, clients=clients, **fields
    ).model_dump()
    return Release("support-assistant", "support-assistant@2", spec, ["Hi"])


SECRET_CLIENTS = [
    {
        "name": "helpdesk-app",
        "api_key": {"secret": "llm-keys/helpdesk"},
        "quotas": {"requests_per_minute": 120, "tokens_per_day": 5000},
    },
    {"name": "nightly-eval", "api_key": {"secret": "llm-keys/nightly"}},
]
ENV_CLIENTS = [
    {"name": "helpdesk-app", "api_key": {"env": "LLMOPS_KEY_HELPDESK"}},
    {"name": "nightly-eval", "api_key": {"env": "LLMOPS_KEY_NIGHTLY"}, "quotas": {}},
]


def test_kserve_mounts_each_clients_secret_into_the_variable_its_config_names() -> None:
    _, isvc = render_manifests(
        release("kserve", SECRET_CLIENTS, api_key={"secret": "llm-keys/ops"})
    )
    env = {e["name"]: e for e in isvc["spec"]["predictor"]["model"]["env"]}
    config = json.loads(env["LLMOPS_SERVE_CONFIG"]["value"])
    assert config["clients"] == [
        {
            "name": "helpdesk-app",
            "key_env": "LLMOPS_CLIENT_KEY_HELPDESK_APP",
            "quotas": {"requests_per_minute": 120, "tokens_per_day": 5000},
        },
        {
            "name": "nightly-eval",
            "key_env": "LLMOPS_CLIENT_KEY_NIGHTLY_EVAL",
            "quotas": {"requests_per_minute": None, "tokens_per_day": None},
        },
    ]
    assert env["LLMOPS_CLIENT_KEY_HELPDESK_APP"]["valueFrom"] == {
        "secretKeyRef": {"name": "llm-keys", "key": "helpdesk"}
    }
    assert env["LLMOPS_CLIENT_KEY_NIGHTLY_EVAL"]["valueFrom"] == {
        "secretKeyRef": {"name": "llm-keys", "key": "nightly"}
    }
    assert "value" not in env["LLMOPS_CLIENT_KEY_HELPDESK_APP"]
    # the runtime accepts what was rendered
    parsed = parse_config(env["LLMOPS_SERVE_CONFIG"]["value"], "manifest")
    assert [c.name for c in parsed.clients] == ["helpdesk-app", "nightly-eval"]


def test_docker_passes_the_specs_variables_through() -> None:
    config = container_config(release("docker", ENV_CLIENTS), "docker")
    variables = [c["key_env"] for c in config["clients"]]
    assert variables == ["LLMOPS_KEY_HELPDESK", "LLMOPS_KEY_NIGHTLY"]
    command = run_command(release("docker", ENV_CLIENTS), "llmops/support-assistant:2")
    assert "-e LLMOPS_KEY_HELPDESK" in command and "-e LLMOPS_KEY_NIGHTLY" in command


@pytest.mark.parametrize(
    ("target", "clients", "words"),
    [
        ("kserve", ENV_CLIENTS, "a KServe pod cannot see"),
        ("docker", SECRET_CLIENTS, "only target kserve can read"),
    ],
)
def test_a_key_source_the_target_cannot_read_is_refused(
    target: str, clients: list[dict[str, Any]], words: str
) -> None:
    with pytest.raises(DeployError, match=words):
        container_config(release(target, clients), target)


@pytest.mark.parametrize("target", ["docker", "kserve"])
def test_without_clients_the_config_has_no_clients_entry(target: str) -> None:
    fields = {"api_key": {"secret": "k/v"}} if target == "kserve" else {}
    assert "clients" not in container_config(release(target, [], **fields), target)


def test_client_key_variables_are_llmops_own() -> None:
    assert client_key_env("web-app-2") == "LLMOPS_CLIENT_KEY_WEB_APP_2"
