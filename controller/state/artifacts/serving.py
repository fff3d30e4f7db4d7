"""State, registry versions as folders in the store: what KServe's storage initializer
downloads from an s3:// URI (<store>/serve/<model>/<number>/<file>), copied from the blobs."""

from __future__ import annotations

from collections.abc import Iterable

from controller.state.artifacts.base import ArtifactStore, blob_key

SERVE_PREFIX = "serve"


def version_key(ref: str) -> str:
    """`model@N` -> serve/<model>/<N>, the version's folder in the store."""
    name, _, number = ref.partition("@")
    return f"{SERVE_PREFIX}/{name}/{number}"


def publish(store: ArtifactStore, ref: str, files: Iterable[tuple[str, str, int]]) -> int:
    """The version's files (path, sha256, size) copied from their blobs into its folder,
    those not there at that size already; how many were copied."""
    prefix = version_key(ref)
    there = dict(store.list(f"{prefix}/"))
    copied = 0
    for path, sha, size in files:
        if there.get(f"{prefix}/{path}") != size:
            store.copy(blob_key(sha), f"{prefix}/{path}")
            copied += 1
    return copied
