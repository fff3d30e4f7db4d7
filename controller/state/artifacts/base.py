"""State, artifact store interface: keys to files in a shared store, opened from LLMOPS_STORE."""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from runners.errors import LlmopsError

CACHE_MAX_ENV = "LLMOPS_STORE_CACHE_MAX"
BLOB_PREFIX = "blobs/sha256"
STATE_PREFIX = "state"
DVC_PREFIX = "dvc"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


class StoreError(LlmopsError):
    """The artifact store cannot be reached or refused a request; the message says what to do."""


@dataclass
class Counters:
    """What this process moved through the store (the benchmark and the tests read them)."""

    uploads: int = 0
    bytes_up: int = 0
    downloads: int = 0
    bytes_down: int = 0
    parts_reused: int = 0  # parts of an interrupted multipart upload not sent again


class ArtifactStore(ABC):
    """Files by key (`blobs/sha256/ab/ab12...`, `state/runs/...`) under one URL."""

    url: str

    def __init__(self) -> None:
        self.counters = Counters()

    @abstractmethod
    def size(self, key: str) -> int | None:
        """The stored object's size in bytes; None when there is none."""

    @abstractmethod
    def upload(self, key: str, source: Path, sha256: str | None = None) -> None:
        """Store `source` under `key`; `sha256`, when known, is recorded with it."""

    @abstractmethod
    def download(
        self,
        key: str,
        target: Path,
        sha256: str | None = None,
        size: int | None = None,
        resume: bool = False,
    ) -> int:
        """Write the object to `target`; with `sha256`, refuse bytes that hash otherwise
        (`target` is then removed); `size`, when the caller looked it up already, saves
        asking again. `resume`: bytes already in `target` (an interrupted download's) are
        kept and only the rest is fetched (S3: ranged GETs from there). Bytes moved."""

    @abstractmethod
    def list_aged(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        """(key, size, seconds since it was written) of every object under `prefix`."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object whose key starts with `prefix`."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; nothing when it is gone already."""

    def copy(self, source: str, target: str) -> None:
        """Store the object at `source` under `target` too (S3 copies it server-side)."""
        with tempfile.TemporaryDirectory() as tmp:
            here = Path(tmp) / "object"
            self.download(source, here)
            self.upload(target, here)

    def dvc_remote(self) -> dict[str, str]:
        """DVC's remote section for the store's dvc/ folder (the DVC remote on the same store)."""
        return {"url": self.sub_url(DVC_PREFIX)}

    def sub_url(self, prefix: str) -> str:
        """The URL of a folder of the store, for tools that take one (DVC's remote)."""
        return f"{self.url.rstrip('/')}/{prefix}"


def round_trip(store: ArtifactStore) -> str:
    """Write, read back, compare and delete a small object (`llmops doctor`): what it did,
    or a StoreError from the step that failed (endpoint, credentials, bucket, permission)."""
    key = f"doctor/{uuid.uuid4().hex}"
    body = os.urandom(64)
    with tempfile.TemporaryDirectory() as tmp:
        sent, got = Path(tmp) / "sent", Path(tmp) / "got"
        sent.write_bytes(body)
        store.upload(key, sent)
        try:
            store.download(key, got)
            if got.read_bytes() != body:
                raise StoreError(
                    f"{store.url}: an object written was read back with other bytes; the "
                    "store (or a proxy in front of it) changes what it serves"
                )
        finally:
            store.delete(key)
    if store.size(key) is not None:
        raise StoreError(f"{store.url}: a deleted object is still listed; deletion is refused")
    return "write, read, delete ok"


def blob_key(sha256: str) -> str:
    return f"{BLOB_PREFIX}/{sha256[:2]}/{sha256}"


def parse_size(text: str, name: str = CACHE_MAX_ENV) -> int:
    """'500M', '20G', '1.5T' or a number of bytes, as a byte count."""
    match = _SIZE.match(text)
    if not match:
        raise StoreError(
            f"{name}={text!r} is not a size: give bytes or a number with K, M, G or T "
            "(for example 20G)"
        )
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** "_kmgt".index(unit)) if unit else int(number)


def cache_max() -> int | None:
    """LLMOPS_STORE_CACHE_MAX in bytes, or None: the local cache is not bounded."""
    text = os.environ.get(CACHE_MAX_ENV, "").strip()
    return parse_size(text) if text else None
