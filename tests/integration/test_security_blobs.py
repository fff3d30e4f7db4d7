"""Issue 27, class 8 (races that lose data), with real processes over a real SQLite registry and
blob store: `llmops models gc` beside a writer that has stored blobs but not registered them
yet, and a pull's tmp cleanup beside another writer that is half-way through a blob."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.apply_repo import build_repo

WEIGHTS = b"racing weights " * 4096
CONTEXT = multiprocessing.get_context("spawn")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    return build_repo(tmp_path_factory.mktemp("race") / "repo", tiny_model)


def _registry(repo: Path) -> Any:
    from controller.state.paths import StatePaths
    from controller.state.registry.store import Registry

    return Registry.open(StatePaths.for_repo(repo))


def store_then_register(repo: str, name: str, written: Any, go: Any) -> None:
    """A writer outside apply (a pull, a training run): blobs first, the version after."""
    from controller.state.registry.store import NewVersion

    registry = _registry(Path(repo))
    blob = registry.blobs.put_bytes(WEIGHTS, "model.safetensors")
    written.set()
    assert go.wait(300)
    registry.register(
        NewVersion(
            name,
            [("model.safetensors", blob)],
            {"architecture": "LlamaForCausalLM", "parameters": 1},
            spec_digest=f"race-{name}",
        )
    )


@pytest.mark.parametrize("earlier", ["new", "stored-long-ago"])
def test_gc_keeps_blobs_written_but_not_yet_registered(
    repo: Path, run_cli: Callable[..., Any], earlier: str
) -> None:
    """Writer A stores a blob and pauses before registering; `llmops models gc` runs in another
    process meanwhile. The blob must survive and A's registration must find it whole. With
    'stored-long-ago' the same bytes were stored (unreferenced) hours before, so A's put only
    finds them present: that must protect them as much as a fresh write."""
    from controller.state.blobs import hash_file

    name = f"racer-{earlier}"
    if earlier == "stored-long-ago":
        old = _registry(repo).blobs.put_bytes(WEIGHTS, "model.safetensors")
        hours_ago = time.time() - 3 * 3600
        os.utime(_registry(repo).blobs.path(old.sha256), (hours_ago, hours_ago))
    written, go = CONTEXT.Event(), CONTEXT.Event()
    writer = CONTEXT.Process(target=store_then_register, args=(str(repo), name, written, go))
    writer.start()
    try:
        assert written.wait(120), "the writer never stored its blob"
        gc = run_cli("models", "gc", "--root", str(repo), cwd=repo)
        assert gc.returncode == 0, gc.stdout + gc.stderr
    finally:
        go.set()
        writer.join(120)
    assert writer.exitcode == 0, "the writer's registration failed: gc deleted its blob"
    registry = _registry(repo)
    version = registry.find(name)
    assert version is not None and registry.has_files(version)
    stored = registry.blobs.path(version.files[0].sha256)
    assert hash_file(stored).sha256 == version.files[0].sha256


def test_gc_still_frees_old_unreferenced_blobs_and_honours_grace(
    repo: Path, run_cli: Callable[..., Any]
) -> None:
    registry = _registry(repo)
    old = registry.blobs.put_bytes(b"nobody uses this " * 64, "orphan")
    young = registry.blobs.put_bytes(b"nobody uses this yet " * 64, "young")
    hours_ago = time.time() - 2 * 3600
    os.utime(registry.blobs.path(old.sha256), (hours_ago, hours_ago))
    gc = run_cli("models", "gc", "--root", str(repo), "--json", cwd=repo)
    assert gc.returncode == 0, gc.stderr
    assert not registry.blobs.exists(old.sha256)
    assert registry.blobs.exists(young.sha256)
    assert young.sha256 not in gc.stdout
    now = run_cli("models", "gc", "--root", str(repo), "--grace", "0", cwd=repo)
    assert now.returncode == 0, now.stderr
    assert not registry.blobs.exists(young.sha256)


def test_gc_waits_for_or_refuses_a_running_apply(repo: Path, run_cli: Callable[..., Any]) -> None:
    """gc holds the apply mutex: beside a running apply it waits, or with --no-wait fails the
    way a second apply does (exit 4, naming who holds the lock)."""
    from controller.state.apply_mutex import exclusive_apply
    from controller.state.paths import StatePaths

    with exclusive_apply(StatePaths.for_repo(repo).root, wait=False):
        busy = run_cli("models", "gc", "--root", str(repo), "--no-wait", cwd=repo)
    assert busy.returncode == 4, busy.stdout + busy.stderr
    assert "another apply is running" in busy.stderr and f"pid {os.getpid()}" in busy.stderr


def write_slowly(blobs: str, source: str, mid: Any, go: Any) -> None:
    """A writer that stops half-way through a blob (its tmp file written, not yet renamed)."""
    from controller.state.blobs import BlobStore

    def pause(_: int) -> None:
        mid.set()
        assert go.wait(300)

    BlobStore(Path(blobs)).put(Path(source), progress=pause)


def test_a_pull_leaves_another_writers_tmp_file_alone(
    repo: Path, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    """Writer 1 is mid-write in blobs/tmp while writer 2 (`llmops models pull --force`)
    finishes and cleans up its own tmp files: writer 1 must still store its blob."""
    from controller.state.blobs import BlobStore, hash_file
    from controller.state.paths import StatePaths

    blobs = StatePaths.for_repo(repo).blobs
    source = tmp_path / "shard.safetensors"
    source.write_bytes(os.urandom(1 << 20))
    mid, go = CONTEXT.Event(), CONTEXT.Event()
    writer = CONTEXT.Process(target=write_slowly, args=(str(blobs), str(source), mid, go))
    writer.start()
    try:
        assert mid.wait(120), "writer 1 never started writing"
        pulled = run_cli("models", "pull", "tiny", "--force", "--root", str(repo), cwd=repo)
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    finally:
        go.set()
        writer.join(120)
    assert writer.exitcode == 0, "writer 1's tmp file was deleted under it"
    expected = hash_file(source).sha256
    assert BlobStore(blobs).verify(expected)


def test_stale_tmp_sweep_removes_only_old_files_of_dead_writers(tmp_path: Path) -> None:
    from controller.state.blobs import BlobStore

    store = BlobStore(tmp_path / "blobs")
    store.put_bytes(b"x", "first")  # creates the tmp folder
    tmp = tmp_path / "blobs" / "tmp"
    dead = CONTEXT.Process(target=time.sleep, args=(0,))
    dead.start()
    dead.join()
    stale = tmp / f"{dead.pid}-abandoned.part"
    fresh = tmp / f"{dead.pid}-recent.part"
    alive_old = tmp / f"{os.getpid()}-mine.part"
    for path in (stale, fresh, alive_old):
        path.write_bytes(b"partial")
    hours_ago = time.time() - 2 * 3600
    for path in (stale, alive_old):
        os.utime(path, (hours_ago, hours_ago))
    store.clean_tmp()
    assert not stale.exists()
    assert fresh.exists() and alive_old.exists()
