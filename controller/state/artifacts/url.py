"""State, artifact store by URL: LLMOPS_STORE names the store a state folder caches."""

from __future__ import annotations

from pathlib import Path

from controller.state.artifacts.base import ArtifactStore, StoreError
from controller.state.artifacts.local import FolderStore
from controller.state.paths import STORE_ENV


def open_store(url: str | None, quick: bool = False) -> ArtifactStore | None:
    """The store a URL names: `s3://bucket/prefix`, `file:///folder` or an absolute path;
    `quick`: short timeouts, no retries (a check)."""
    if not url:
        return None
    if url.startswith("s3://"):
        from controller.state.artifacts.s3 import S3Store

        return S3Store(url, quick=quick)
    if url.startswith("file://") or url.startswith("/"):
        return FolderStore(Path(url.removeprefix("file://")))
    raise StoreError(
        f"{STORE_ENV}={url!r} is not a store URL: use s3://bucket/prefix (any S3-compatible "
        "service; endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY), file:///shared/folder, or leave it unset for the state folder"
    )
