"""The registry under 8 writer processes, on SQLite (WAL) and on PostgreSQL: every version
registered, numbers unique and without gaps per model, every file's blob row present, the
database intact (SQLite: PRAGMA integrity_check). The writers open the registry before it
exists, so its creation (the migrations) is concurrent too."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

WRITERS = 8
VERSIONS_EACH = 6


def writer(state: str, index: int, ready: multiprocessing.synchronize.Barrier) -> None:
    from controller.state.paths import StatePaths
    from controller.state.registry.store import NewVersion, Registry

    ready.wait()  # all at once, on a registry nobody created yet: 8 migrations race too
    registry = Registry.open(StatePaths(Path(state)))
    for n in range(VERSIONS_EACH):
        blob = registry.blobs.put_bytes(f"w{index}-{n}".encode() * 100, "model.safetensors")
        shared = registry.blobs.put_bytes(b"{}", "config.json")
        registry.register(
            NewVersion(
                f"m{index % 2}",
                [("model.safetensors", blob), ("config.json", shared)],
                {"architecture": "LlamaForCausalLM", "parameters": 1},
                spec_digest=f"d{index}-{n}",
            )
        )


def run_writers(state: Path) -> float:
    """WRITERS processes register VERSIONS_EACH versions each, all starting at once; seconds."""
    context = multiprocessing.get_context("spawn")  # children read LLMOPS_REGISTRY_URL afresh
    ready = context.Barrier(WRITERS)
    start = time.perf_counter()
    processes = [
        context.Process(target=writer, args=(str(state), i, ready)) for i in range(WRITERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    assert [p.exitcode for p in processes] == [0] * WRITERS
    return time.perf_counter() - start


def assert_numbered(rows: list[tuple[str, int]]) -> None:
    assert len(rows) == WRITERS * VERSIONS_EACH
    for name in ("m0", "m1"):
        numbers = sorted(n for m, n in rows if m == name)
        assert numbers == list(range(1, len(numbers) + 1))


def test_eight_concurrent_writers_keep_the_registry_whole(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("LLMOPS_REGISTRY_URL", raising=False)

    state = tmp_path / ".llmops"
    seconds = run_writers(state)
    db = sqlite3.connect(state / "registry.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        rows = db.execute(
            "SELECT m.name, v.number FROM model_versions v JOIN models m ON m.id = v.model_id"
        ).fetchall()
    finally:
        db.close()
    assert_numbered(rows)
    print(
        f"\nSQLite: {WRITERS} writers x {VERSIONS_EACH} versions in {seconds:.1f} s: "
        f"{len(rows)} versions, numbers unique, integrity ok"
    )


def test_eight_concurrent_writers_on_postgresql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_url: str
) -> None:
    from controller.state.registry.db import make_engine

    schema = "c" + uuid.uuid4().hex[:10]  # a database of its own on the session's server
    with make_engine(postgres_url).begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = f"{postgres_url}?options=-csearch_path%3D{schema}"
    monkeypatch.setenv("LLMOPS_REGISTRY_URL", url)
    state = tmp_path / ".llmops"
    seconds = run_writers(state)
    with make_engine(url).connect() as conn:
        rows = [
            (m, n)
            for m, n in conn.execute(
                text(
                    "SELECT m.name, v.number FROM model_versions v "
                    "JOIN models m ON m.id = v.model_id"
                )
            )
        ]
        orphans = conn.execute(
            text(
                "SELECT count(*) FROM version_files f LEFT JOIN blobs b ON b.sha256 = f.sha256 "
                "WHERE b.sha256 IS NULL"
            )
        ).scalar_one()
    assert_numbered(rows)
    assert orphans == 0
    print(
        f"\nPostgreSQL: {WRITERS} writers x {VERSIONS_EACH} versions in {seconds:.1f} s: "
        f"{len(rows)} versions, numbers unique, every file's blob recorded"
    )
