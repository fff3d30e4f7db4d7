"""SQLite (WAL) under 8 writer processes: every version registered, numbers unique, database
intact (PRAGMA integrity_check)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path

WRITERS = 8
VERSIONS_EACH = 6


def writer(state: str, index: int, ready: multiprocessing.synchronize.Barrier) -> None:
    from controller.state.paths import StatePaths
    from controller.state.registry.store import NewVersion, Registry

    registry = Registry.open(StatePaths(Path(state)))
    ready.wait()
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


def test_eight_concurrent_writers_keep_the_registry_whole(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("LLMOPS_REGISTRY_URL", raising=False)
    from controller.state.paths import StatePaths
    from controller.state.registry.store import Registry

    state = tmp_path / ".llmops"
    Registry.open(StatePaths(state))  # migrate once, as apply does before running work
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(WRITERS)
    start = time.perf_counter()
    processes = [
        context.Process(target=writer, args=(str(state), i, ready)) for i in range(WRITERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    seconds = time.perf_counter() - start
    assert [p.exitcode for p in processes] == [0] * WRITERS
    db = sqlite3.connect(state / "registry.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        rows = db.execute(
            "SELECT m.name, v.number FROM model_versions v JOIN models m ON m.id = v.model_id"
        ).fetchall()
    finally:
        db.close()
    assert len(rows) == WRITERS * VERSIONS_EACH
    for name in ("m0", "m1"):
        numbers = sorted(n for m, n in rows if m == name)
        assert numbers == list(range(1, len(numbers) + 1))
    print(f"\n{WRITERS} writers x {VERSIONS_EACH} versions in {seconds:.1f} s: integrity ok")
