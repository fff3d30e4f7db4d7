"""State, artifact store on a folder: a shared mount (NFS, a volume) holding the store's keys."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from controller.state.artifacts.base import ArtifactStore, StoreError

CHUNK = 8 << 20


class FolderStore(ArtifactStore):
    """Keys are paths under `root`; writes land in a temporary file and are renamed in."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root.resolve()
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise StoreError(f"store key {key!r} leaves the store folder {self.root}")
        return path

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def upload(self, key: str, source: Path, sha256: str | None = None) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}")
        try:
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        self.counters.uploads += 1
        self.counters.bytes_up += target.stat().st_size

    def download(
        self,
        key: str,
        target: Path,
        sha256: str | None = None,
        size: int | None = None,
        resume: bool = False,
    ) -> int:
        """A local copy (a copy cut short starts again: reading a mount costs no round trip)."""
        source = self._path(key)
        if not source.is_file():
            raise StoreError(f"{self.url}/{key} is not in the store")
        digest = hashlib.sha256()
        got = 0
        with source.open("rb") as reader, target.open("wb") as writer:
            while chunk := reader.read(CHUNK):
                digest.update(chunk)
                writer.write(chunk)
                got += len(chunk)
        if sha256 is not None and digest.hexdigest() != sha256:
            target.unlink(missing_ok=True)
            raise StoreError(
                f"{self.url}/{key} hashes to sha256:{digest.hexdigest()[:12]}, not its name: "
                "the stored copy is damaged; delete it and store it again from a good copy"
            )
        self.counters.downloads += 1
        self.counters.bytes_down += got
        return got

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        base = self._path(prefix) if prefix else self.root
        folder = base if base.is_dir() else base.parent
        if not folder.is_dir():
            return
        for path in sorted(folder.rglob("*")):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and key.startswith(prefix) and not path.name.startswith("."):
                yield key, path.stat().st_size

    def list_aged(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        now = time.time()
        for key, size in self.list(prefix):
            yield key, size, now - self._path(key).stat().st_mtime

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
