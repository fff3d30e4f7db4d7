"""A Deployment's `clients`: each a name, a key source and optional quotas; `llmops validate`
refuses a bad one at its file, line and field."""

from __future__ import annotations

import textwrap

import pytest

from controller.api.deployment import DeploymentSpec
from controller.load.loader import load_text
from tests.conftest import PROJECT_ROOT

FILE = "specs/deployments/support-assistant.yaml"
HEAD = """
apiVersion: llmops/v1
kind: Deployment
metadata:
  name: support-assistant
spec:
  model: support-assistant@champion
"""


def load(spec_tail: str) -> list:
    tail = textwrap.indent(textwrap.dedent(spec_tail).lstrip("\n"), "  ")
    text = textwrap.dedent(HEAD).lstrip("\n") + tail
    return load_text(text, FILE).diagnostics


def test_clients_with_keys_and_quotas_are_accepted() -> None:
    found = load(
        """
          api_key: {env: LLMOPS_KEY_OPS}
          clients:
            - name: web-app
              api_key: {env: LLMOPS_KEY_WEB_APP}
              quotas: {requests_per_minute: 60, tokens_per_day: 100000}
            - name: batch
              api_key: {secret: llm-keys/batch}
        """
    )
    assert found == []


@pytest.mark.parametrize(
    ("entry", "line", "path", "words"),
    [
        # a quota must be a positive whole number
        (
            "- {name: web, api_key: {env: LLMOPS_KEY_W}, quotas: {requests_per_minute: 0}}",
            8,
            "spec.clients[0].quotas.requests_per_minute",
            "greater than or equal to 1",
        ),
        (
            "- {name: web, api_key: {env: LLMOPS_KEY_W}, quotas: {tokens_per_day: -5}}",
            8,
            "spec.clients[0].quotas.tokens_per_day",
            "greater than or equal to 1",
        ),
        # keys come from LLMOPS_KEY_* variables only, as api_key's do
        (
            "- {name: web, api_key: {env: GITHUB_TOKEN}}",
            8,
            "spec.clients[0].api_key.env",
            "LLMOPS_KEY_",
        ),
        (
            "- {name: Web, api_key: {env: LLMOPS_KEY_W}}",
            8,
            "spec.clients[0].name",
            "not a valid name",
        ),
        ("- {name: web}", 8, "spec.clients[0].api_key", "required"),
        (
            "- {name: web, api_key: {env: LLMOPS_KEY_W}, quota: {tokens_per_day: 5}}",
            8,
            "spec.clients[0].quota",
            "",
        ),
    ],
)
def test_a_bad_client_is_refused_at_its_field(entry: str, line: int, path: str, words: str) -> None:
    (found,) = load(f"clients:\n  {entry}\n")
    assert (found.file, found.line, found.path) == (FILE, line, path)
    assert words in found.message


def test_client_names_are_unique() -> None:
    (found,) = load(
        """
        clients:
          - {name: web, api_key: {env: LLMOPS_KEY_A}}
          - {name: web, api_key: {env: LLMOPS_KEY_B}}
        """
    )
    assert (found.line, found.path) == (8, "spec.clients")
    assert "clients[1] repeats the name 'web' of clients[0]" in found.message


def test_default_names_the_api_key_holder() -> None:
    (found,) = load("clients:\n  - {name: default, api_key: {env: LLMOPS_KEY_A}}\n")
    assert found.path == "spec.clients" and "'default'" in found.message


def test_two_clients_cannot_share_a_key_source() -> None:
    (found,) = load(
        """
        api_key: {env: LLMOPS_KEY_A}
        clients:
          - {name: web, api_key: {secret: keys/web}}
          - {name: app, api_key: {env: LLMOPS_KEY_A}}
        """
    )
    assert found.path == "spec.clients"
    assert "clients[1] ('app')" in found.message and "api_key (client 'default')" in found.message


def test_a_spec_without_clients_dumps_as_before() -> None:
    """The digest of every existing Deployment stays the same: nothing redeploys."""
    plain = DeploymentSpec.model_validate({"model": "m"})
    assert "clients" not in plain.model_dump()
    listed = DeploymentSpec.model_validate(
        {"model": "m", "clients": [{"name": "web", "api_key": {"env": "LLMOPS_KEY_W"}}]}
    )
    assert listed.model_dump()["clients"][0]["quotas"] == {
        "requests_per_minute": None,
        "tokens_per_day": None,
    }


def test_the_documented_snippet_validates() -> None:
    text = (PROJECT_ROOT / "docs" / "integration.md").read_text(encoding="utf-8")
    section = text.split("## Clients, quotas and usage", 1)[1]
    snippet = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    loaded = load_text(snippet, FILE)
    assert loaded.diagnostics == []
    assert "clients:" in snippet and "quotas:" in snippet
