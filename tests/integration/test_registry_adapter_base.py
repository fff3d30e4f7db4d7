"""Removing a base version that a served LoRA adapter loads on is refused, naming the
deployment and the adapter; a full fine-tune of it does not hold it, and --force still can."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli.models import _deployment_refs
from controller.state.paths import StatePaths
from controller.state.registry.maintenance import remove_version
from controller.state.registry.store import NewVersion, Registry, RegistryError
from tests.integration.test_registry import META, files


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.delenv("LLMOPS_REGISTRY_URL", raising=False)
    return Registry.open(StatePaths(tmp_path / ".llmops"))


def register(registry: Registry, tmp_path: Path, name: str, contents: dict, base=None) -> None:
    lineage = {"base_version_id": base.id} if base is not None else None
    found = files(tmp_path / name, registry.blobs, contents)
    registry.register(NewVersion(name, found, META, lineage=lineage))


def test_a_base_that_served_adapters_use_is_not_removed(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path, "tiny", {"model.safetensors": b"base"})
    base = registry.find("tiny@1")
    adapter = {"adapter_config.json": b"{}", "adapter_model.safetensors": b"lora"}
    register(registry, tmp_path, "assistant", adapter, base=base)
    register(registry, tmp_path, "tuned", {"model.safetensors": b"full"}, base=base)

    # A deployment serving the adapter (as its model, or among its `adapters`) holds the base.
    for refs in (["assistant@1"], ["other@1", "assistant"]):
        with pytest.raises(RegistryError) as refused:
            remove_version(registry, "tiny@1", {"support": refs})
        message = str(refused.value)
        assert "tiny@1 is used by deployment support (adapter assistant" in message
        assert "move the deployment to another version first, or pass --force" in message
    # A full fine-tune carries its own weights: its base may go.
    assert remove_version(registry, "tiny@1", {"support": ["tuned@1"]}) == "tiny@1"


def test_force_removes_it_anyway(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path, "tiny", {"model.safetensors": b"base"})
    base = registry.find("tiny@1")
    register(registry, tmp_path, "assistant", {"adapter_config.json": b"{}"}, base=base)
    assert remove_version(registry, "tiny@1", {"d": ["assistant@1"]}, force=True) == "tiny@1"


def test_a_deployments_adapters_count_as_its_references(tmp_path: Path) -> None:
    folder = tmp_path / "specs" / "deployments"
    folder.mkdir(parents=True)
    (folder / "support.yaml").write_text(
        "apiVersion: llmops/v1\nkind: Deployment\nmetadata: {name: support}\n"
        "spec: {model: tiny@1, adapters: [assistant@1, billing@champion]}\n"
    )
    assert _deployment_refs(tmp_path) == {"support": ["tiny@1", "assistant@1", "billing@champion"]}
