"""A Deployment's `adapters`: LoRA versions served beside the model by one process; absent
from the dump when empty (no digest changes), refused at their field when they cannot be
served."""

from __future__ import annotations

import textwrap

import pytest

from controller.api.deployment import DeploymentSpec
from controller.load.loader import load_text

FILE = "specs/deployments/support.yaml"
HEAD = """
apiVersion: llmops/v1
kind: Deployment
metadata:
  name: support
spec:
  model: smollm2-135m-instruct@1
"""


def load(spec_tail: str) -> list:
    tail = textwrap.indent(textwrap.dedent(spec_tail).lstrip("\n"), "  ")
    return load_text(textwrap.dedent(HEAD).lstrip("\n") + tail, FILE).diagnostics


@pytest.mark.parametrize("target", ["local", "docker", "kserve"])
def test_adapters_are_accepted(target: str) -> None:
    adapters = "adapters: [support-assistant@1, billing-assistant@champion]\n"
    assert load(f"target: {target}\n{adapters}") == []


@pytest.mark.parametrize(
    ("tail", "words"),
    [
        ("adapters: [a@1, a@2]\n", "names the Model 'a' again (adapters[0])"),
        ("adapters: [smollm2-135m-instruct@2]\n", "adapters[0] is the served model itself"),
        ("runtime: llama-cpp\nadapters: [a@1]\n", "runtime transformers only"),
        ("adapters: [Bad Name]\n", ""),
    ],
)
def test_adapters_that_cannot_be_served_are_refused_at_their_field(tail: str, words: str) -> None:
    (found,) = load(tail)
    assert found.file == FILE and found.path.startswith("spec.adapters")
    assert words in found.message


def test_a_spec_without_adapters_dumps_as_before() -> None:
    plain = DeploymentSpec.model_validate({"model": "m"})
    assert "adapters" not in plain.model_dump()
    assert "adapters" not in plain.model_dump(mode="json")
    empty = DeploymentSpec.model_validate({"model": "m", "adapters": []})
    assert empty.model_dump() == plain.model_dump()
    served = DeploymentSpec.model_validate({"model": "m", "adapters": ["a@1"]})
    assert served.model_dump()["adapters"] == ["a@1"]
