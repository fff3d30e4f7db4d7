"""Blob store: content addressing, deduplication, atomic writes, verification."""

from __future__ import annotations

import hashlib
from pathlib import Path

from controller.state.blobs import BlobStore


def test_put_stores_by_content_once(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    a = tmp_path / "a.bin"
    b = tmp_path / "b.bin"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    first, second = store.put(a), store.put(b)
    assert first == second
    assert first.sha256 == hashlib.sha256(b"same bytes").hexdigest()
    assert [blob.sha256 for blob in store] == [first.sha256]
    assert store.path(first.sha256).read_bytes() == b"same bytes"
    assert a.exists()  # copied, never moved
    assert not any((tmp_path / "blobs" / "tmp").glob("*"))


def test_verify_detects_changed_content(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    src = tmp_path / "f"
    src.write_bytes(b"x" * 10)
    blob = store.put(src)
    assert store.verify(blob.sha256)
    path = store.path(blob.sha256)
    path.chmod(0o644)
    path.write_bytes(b"y" * 10)
    assert not store.verify(blob.sha256)
    assert store.delete(blob.sha256) == 10
    assert not store.exists(blob.sha256)
    assert not store.verify(blob.sha256)


def test_blobs_are_read_only(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    src = tmp_path / "f"
    src.write_bytes(b"data")
    blob = store.put(src)
    assert store.path(blob.sha256).stat().st_mode & 0o222 == 0
