"""Model files: a changed blob is refused at load; loaders take safetensors only, no remote code."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from controller.state.paths import StatePaths
from controller.state.registry.store import NewVersion, Registry, RegistryError
from runners.errors import InvalidInput
from runners.weights import require_safetensors
from tests.conftest import PROJECT_ROOT

META = {"architecture": "LlamaForCausalLM", "model_type": "llama", "parameters": 10}


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.delenv("LLMOPS_REGISTRY_URL", raising=False)
    return Registry.open(StatePaths(tmp_path / ".llmops"))


def register(registry: Registry, tmp_path: Path, contents: dict[str, bytes]):
    files = []
    for name, data in contents.items():
        path = tmp_path / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files.append((name, registry.blobs.put(path)))
    return registry.register(NewVersion("m", files, META))


def test_a_changed_blob_is_refused_at_load(registry: Registry, tmp_path: Path) -> None:
    version = register(registry, tmp_path, {"model.safetensors": b"w" * 4096, "config.json": b"{}"})
    folder = registry.materialize(registry.find("m@1"))
    assert (folder / "model.safetensors").read_bytes() == b"w" * 4096
    blob = registry.blobs.path(next(f.sha256 for f in version.files if f.path.endswith("s")))
    blob.chmod(0o644)
    blob.write_bytes(b"x" * 4096)  # same size, new content
    with pytest.raises(RegistryError) as refused:
        registry.materialize(registry.find("m@1"))
    message = str(refused.value)
    assert "m@1" in message and "model.safetensors" in message and "models verify" in message


def test_a_swapped_view_link_is_rebuilt(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path, {"model.safetensors": b"good", "config.json": b"{}"})
    folder = registry.materialize(registry.find("m@1"))
    planted = tmp_path / "planted.safetensors"
    planted.write_bytes(b"evil")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(planted)
    folder = registry.materialize(registry.find("m@1"))
    assert (folder / "model.safetensors").read_bytes() == b"good"


def test_verified_blobs_are_not_rehashed(registry: Registry, tmp_path: Path, monkeypatch) -> None:
    register(registry, tmp_path, {"model.safetensors": b"w" * 100})
    registry.materialize(registry.find("m@1"))
    import controller.state.blobs as blobs

    def no_hashing(*_: object) -> None:
        raise AssertionError("re-hashed a verified blob")

    monkeypatch.setattr(blobs, "hash_file", no_hashing)
    registry.materialize(registry.find("m@1"))


def test_pickled_weights_alone_are_refused(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(InvalidInput, match="pickled weights"):
        require_safetensors(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    require_safetensors(tmp_path)


def test_every_runner_loads_weights_safely() -> None:
    """Each from_pretrained of a model or tokenizer in runners/ passes SAFE_MODEL or
    SAFE_TOKENIZER (or the flags themselves); GGUF conversion at pull is the one exception."""
    unsafe = []
    for path in sorted((PROJECT_ROOT / "runners").rglob("*.py")):
        if path.name == "gguf.py":
            continue
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "from_pretrained"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id.startswith("Auto")
            ):
                continue
            names = {k.arg for k in node.keywords}
            splats = {ast.unparse(k.value) for k in node.keywords if k.arg is None}
            model = node.func.value.id != "AutoTokenizer"
            safe = (
                "SAFE_MODEL" in splats or {"use_safetensors", "trust_remote_code"} <= names
                if model
                else "SAFE_TOKENIZER" in splats or "trust_remote_code" in names
            )
            flags = "**SAFE_MODEL" in source or '"use_safetensors": True' in source
            if not safe and "kwargs" in splats and flags:
                safe = True
            if not safe:
                unsafe.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}")
    assert unsafe == []
    assert "weights_only=False" not in os.linesep.join(
        p.read_text() for p in (PROJECT_ROOT / "runners").rglob("*.py")
    )
