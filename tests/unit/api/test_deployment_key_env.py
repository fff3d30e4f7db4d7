"""A Deployment's `api_key: {env: NAME}` may only name a key variable (LLMOPS_KEY_*): a spec
that names any other variable of the apply environment (a CI token, a cloud key) would copy
it into a runtime, so `llmops validate` refuses it at its file and line."""

from __future__ import annotations

import textwrap

import pytest

from controller.api.deployment import KEY_ENV_PREFIX
from controller.load.loader import load_text

DEPLOYMENT = """
apiVersion: llmops/v1
kind: Deployment
metadata:
  name: support-assistant
spec:
  model: support-assistant@champion
  api_key: {{env: {name}}}
"""
FILE = "specs/deployments/support-assistant.yaml"


def load(name: str) -> list:
    text = textwrap.dedent(DEPLOYMENT).lstrip("\n").format(name=name)
    return load_text(text, FILE).diagnostics


@pytest.mark.parametrize(
    "name", ["GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "LLMOPS_SERVE_API_KEY", "PATH"]
)
def test_a_variable_outside_the_key_pattern_is_refused_where_it_is_written(name: str) -> None:
    (found,) = load(name)
    assert (found.file, found.line, found.path) == (FILE, 7, "spec.api_key.env")
    assert name in found.message and KEY_ENV_PREFIX in found.message
    assert KEY_ENV_PREFIX in found.hint


@pytest.mark.parametrize("name", ["LLMOPS_KEY_SUPPORT_ASSISTANT", "LLMOPS_KEY_A1"])
def test_a_key_variable_is_accepted(name: str) -> None:
    assert load(name) == []


def test_a_kubernetes_secret_is_still_accepted() -> None:
    text = textwrap.dedent(DEPLOYMENT).lstrip("\n").replace("{{env: {name}}}", "{secret: keys/s}")
    assert load_text(text, FILE).diagnostics == []
