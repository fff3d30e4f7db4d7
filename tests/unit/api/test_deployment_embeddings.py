"""A Deployment's `embeddings`: off by default and absent from the dump then, so no digest
changes; `llmops validate` refuses a bad one at its file, line and field."""

from __future__ import annotations

import textwrap

import pytest

from controller.api.deployment import DeploymentSpec
from controller.load.loader import load_text
from runners.deploy.release import Release, container_config
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


def test_embeddings_are_accepted() -> None:
    assert load("embeddings: {enabled: true, pooling: last, normalize: false}\n") == []


@pytest.mark.parametrize(
    ("tail", "line", "path", "words"),
    [
        (
            "embeddings: {enabled: true, pooling: max}\n",
            7,
            "spec.embeddings.pooling",
            "one of: mean, last",
        ),
        (
            "embeddings:\n  enabled: true\n  pooling: cls\n",
            9,
            "spec.embeddings.pooling",
            "'cls' is not allowed",
        ),
        ("embeddings: {enabled: yes please}\n", 7, "spec.embeddings.enabled", "boolean"),
        ("embeddings: {enabled: true, pool: mean}\n", 7, "spec.embeddings.pool", ""),
        ("embeddings: {enabled: true, model: Bad Name}\n", 7, "spec.embeddings.model", ""),
        (
            "runtime: llama-cpp\nembeddings: {enabled: true}\n",
            8,
            "spec.embeddings",
            "set embeddings.model",
        ),
    ],
)
def test_a_bad_embeddings_section_is_refused_at_its_field(
    tail: str, line: int, path: str, words: str
) -> None:
    (found,) = load(tail)
    assert (found.file, found.line, found.path) == (FILE, line, path)
    assert words in found.message


def test_a_spec_without_embeddings_dumps_as_before() -> None:
    """The digest of every existing Deployment stays the same: nothing redeploys."""
    plain = DeploymentSpec.model_validate({"model": "m"})
    assert "embeddings" not in plain.model_dump()
    assert "embeddings" not in plain.model_dump(mode="json")
    written_off = DeploymentSpec.model_validate({"model": "m", "embeddings": {"enabled": False}})
    assert written_off.model_dump() == plain.model_dump()
    on = DeploymentSpec.model_validate({"model": "m", "embeddings": {"enabled": True}})
    assert on.model_dump()["embeddings"] == {
        "enabled": True,
        "model": None,
        "pooling": "mean",
        "normalize": True,
    }


def test_a_container_config_carries_embeddings_only_when_on() -> None:
    def config(spec: DeploymentSpec) -> dict:
        release = Release("dep", "m@1", spec.model_dump(mode="json"))
        return container_config(release, "docker")

    plain = config(DeploymentSpec.model_validate({"model": "m"}))
    assert "embeddings" not in plain
    on = config(DeploymentSpec.model_validate({"model": "m", "embeddings": {"enabled": True}}))
    assert on["embeddings"] == {"enabled": True, "pooling": "mean", "normalize": True}
    from runners.serve.config import ServeConfig

    assert ServeConfig.model_validate(on).embeddings.enabled


def test_the_documented_snippet_validates() -> None:
    text = (PROJECT_ROOT / "docs" / "integration.md").read_text(encoding="utf-8")
    section = text.split("## Embeddings", 1)[1]
    snippet = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    loaded = load_text(snippet, FILE)
    assert loaded.diagnostics == []
    assert "embeddings:" in snippet
