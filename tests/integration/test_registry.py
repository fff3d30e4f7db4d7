"""The registry on real databases (SQLite and PostgreSQL) over a real blob store."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from controller.state.blobs import BlobStore
from controller.state.paths import StatePaths
from controller.state.registry.db import head_revision, make_engine, migrate
from controller.state.registry.maintenance import collect_garbage, disk_usage, verify
from controller.state.registry.schema import BlobRow
from controller.state.registry.store import NewVersion, Registry, RegistryError


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Registry:
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        schema = "t" + uuid.uuid4().hex[:10]
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        monkeypatch.setenv("LLMOPS_REGISTRY_URL", f"{url}?options=-csearch_path%3D{schema}")
    else:
        monkeypatch.delenv("LLMOPS_REGISTRY_URL", raising=False)
    return Registry.open(StatePaths(tmp_path / ".llmops"))


def files(tmp_path: Path, store: BlobStore, contents: dict[str, bytes]) -> list:
    out = []
    for name, data in contents.items():
        path = tmp_path / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out.append((name, store.put(path)))
    return out


META = {
    "architecture": "LlamaForCausalLM",
    "model_type": "llama",
    "parameters": 1000,
    "dtype": "float32",
    "context_length": 256,
    "vocab_size": 300,
    "chat_template": True,
    "license": "mit",
    "source_quantization": "Q4_1",
}


def test_two_versions_share_a_file_stored_once(registry: Registry, tmp_path: Path) -> None:
    shared = b"weights" * 1000
    v1 = registry.register(
        NewVersion(
            "m",
            files(tmp_path, registry.blobs, {"model.safetensors": shared, "config.json": b"{}"}),
            META,
            spec_digest="d1",
            aliases=["champion"],
        )
    )
    v2 = registry.register(
        NewVersion(
            "m",
            files(
                tmp_path, registry.blobs, {"model.safetensors": shared, "config.json": b'{"v": 2}'}
            ),
            META,
            spec_digest="d2",
        )
    )
    assert (v1.number, v2.number) == (1, 2)
    assert len(list(registry.blobs)) == 3
    with registry.sessions() as session:
        assert session.scalar(select(func.count()).select_from(BlobRow)) == 3
    rows, stored, logical = disk_usage(registry)
    assert stored == len(shared) + 2 + 8
    assert logical == 2 * len(shared) + 2 + 8
    assert {r.ref: r.unique for r in rows} == {"m@1": 2, "m@2": 8}
    assert v1.extra["source_quantization"] == "Q4_1"


def test_refs_aliases_and_removal(registry: Registry, tmp_path: Path) -> None:
    for i in range(3):
        registry.register(
            NewVersion(
                "m", files(tmp_path, registry.blobs, {"w": bytes([i])}), META, spec_digest=f"d{i}"
            )
        )
    registry.set_alias("m", "champion", 2)
    assert registry.find("m").number == 3
    assert registry.find("m@1").number == 1
    assert registry.find("m@champion").number == 2
    assert registry.find("m@nope") is None
    assert registry.find("other") is None
    assert registry.find_by("m", spec_digest="d0").number == 1
    registry.set_alias("m", "champion", 3)
    assert registry.find("m@champion").number == 3
    registry.remove("m", 3)
    assert registry.find("m@champion") is None
    with pytest.raises(RegistryError):
        registry.remove("m", 3)
    report = collect_garbage(registry, grace_s=0)  # just written: no grace period
    assert len(report.removed) == 1 and report.freed == 1
    assert len(list(registry.blobs)) == 2


def test_verify_finds_tampered_and_missing_files(registry: Registry, tmp_path: Path) -> None:
    version = registry.register(
        NewVersion("m", files(tmp_path, registry.blobs, {"a": b"aaaa", "b": b"bbbb"}), META)
    )
    assert verify(registry).problems == []
    view = registry.materialize(version)
    assert (view / "a").read_bytes() == b"aaaa"
    blob_a = registry.blobs.path(version.files[0].sha256)
    blob_a.chmod(0o644)
    blob_a.write_bytes(b"AAAA")
    registry.blobs.delete(version.files[1].sha256)
    problems = {(p.path, p.problem) for p in verify(registry).problems}
    assert ("a", "content does not match its sha256") in problems
    assert ("b", "missing from the blob store") in problems


def test_register_refuses_blobs_not_in_the_store(registry: Registry, tmp_path: Path) -> None:
    from controller.state.blobs import Blob

    with pytest.raises(RegistryError):
        registry.register(NewVersion("m", [("w", Blob("0" * 64, 1))], META))
    assert registry.find("m") is None  # nothing half-written


def test_metrics_and_lineage(registry: Registry, tmp_path: Path) -> None:
    base = registry.register(NewVersion("base", files(tmp_path, registry.blobs, {"w": b"1"}), META))
    tuned = registry.register(
        NewVersion(
            "tuned",
            files(tmp_path, registry.blobs, {"w": b"2"}),
            META,
            lineage={
                "base_version_id": base.id,
                "dataset_version": "sha256:abc",
                "experiment_run": "exp/default",
                "git_commit": "deadbeef",
                "config_digest": "sha256:def",
                "packages": {"torch": "2.13.0"},
                "seeds": {"training": 0},
            },
        )
    )
    registry.add_metrics(tuned.id, "suite", "sha256:s", {"faq/rouge_l": 0.5})
    found = registry.find("tuned")
    assert found.lineage.base_version_id == base.id
    assert found.lineage.packages == {"torch": "2.13.0"}
    assert [(m.name, m.value) for m in found.metrics] == [("faq/rouge_l", 0.5)]


def test_migrations_are_idempotent(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    migrate(engine)
    migrate(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == (
            head_revision()
        )
