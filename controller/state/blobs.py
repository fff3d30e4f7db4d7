"""State, blob store: every file stored once by sha256, written atomically, verified by digest.

With an artifact store (LLMOPS_STORE) the folder is a cache of the store: a put uploads, a
blob missing here is fetched (verified by its sha256) when read, and LLMOPS_STORE_CACHE_MAX
bounds the folder by evicting the least recently used blobs the store holds.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from controller.state.artifacts.base import ArtifactStore, StoreError, blob_key

CHUNK = 4 << 20
# A file in blobs/tmp older than this whose writer is gone is an abandoned write; anything
# younger, or of a live process, may be another writer's half-written blob.
STALE_TMP_S = 3600
# Eviction never removes a blob used this recently: the version being loaded stays whole
# even when it alone is larger than the cache's limit.
EVICT_MIN_IDLE_S = 600
FETCHED_LOG = "fetched.jsonl"
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int


class BlobStore:
    """Files under blobs/sha256/<2 hex>/<64 hex>, read-only once written.

    A write copies into a temporary file in the same folder while hashing, fsyncs it, and
    renames it into place, so a crash leaves either no blob or a whole one.
    """

    def __init__(
        self, root: Path, store: ArtifactStore | None = None, cache_max: int | None = None
    ) -> None:
        self.root = root
        self.store = store
        self.cache_max = cache_max
        self.fetched: list[Blob] = []  # what this process fetched from the store
        self._verified: dict[str, list[int]] | None = None

    # A blob handed to a loader is checked against its digest first (`check`): hashed once,
    # then trusted while its size, mtime and inode stay what they were when it was hashed
    # (`verified.json`). Something that rewrites a blob and restores its mtime defeats the
    # fast path; `llmops models verify` re-hashes everything.
    VERIFIED = "verified.json"

    def _stamp(self, path: Path) -> list[int]:
        st = path.stat()
        return [st.st_size, st.st_mtime_ns, st.st_ino]

    def _verified_stamps(self) -> dict[str, list[int]]:
        if self._verified is None:
            try:
                data = json.loads((self.root / self.VERIFIED).read_text())
                self._verified = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self._verified = {}
        return self._verified

    def _remember(self, stamps: dict[str, list[int]]) -> None:
        known = self._verified_stamps()
        known.update(stamps)
        tmp = self.root / f".{self.VERIFIED}.{os.getpid()}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(known))
            os.replace(tmp, self.root / self.VERIFIED)
        except OSError:
            tmp.unlink(missing_ok=True)  # the cache only saves time

    def check(self, sha256: str, size: int | None = None) -> str | None:
        """None when the blob holds its digest's bytes; otherwise what is wrong with it."""
        path = self.path(sha256)
        self._ensure(sha256, size)
        try:
            stamp = self._stamp(path)
        except OSError:
            return "missing from the blob store"
        self._used(path)
        if size is not None and stamp[0] != size:
            return f"{stamp[0]} bytes where {size} were stored"
        if self._verified_stamps().get(sha256) == stamp:
            return None
        actual = hash_file(path).sha256
        if actual != sha256:
            return f"its content now hashes to sha256:{actual[:12]}"
        self._remember({sha256: stamp})
        return None

    def path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def exists(self, sha256: str, size: int | None = None) -> bool:
        """Here or in the artifact store (which is asked, nothing is fetched)."""
        return self._here(sha256, size) or self._in_store(sha256, size)

    def _here(self, sha256: str, size: int | None = None) -> bool:
        path = self.path(sha256)
        try:
            return path.is_file() and (size is None or path.stat().st_size == size)
        except OSError:
            return False

    def _in_store(self, sha256: str, size: int | None = None) -> bool:
        if self.store is None:
            return False
        stored = self.store.size(blob_key(sha256))
        return stored is not None and (size is None or stored == size)

    def local(self, sha256: str) -> Path:
        """The blob's file here, fetched from the artifact store first when only it has it."""
        path = self.path(sha256)
        self._ensure(sha256)
        self._used(path)
        return path

    def _ensure(self, sha256: str, size: int | None = None) -> None:
        """Fetch the blob when it is not here and the store has it (at `size`, when given)."""
        if self.store is None or self.path(sha256).is_file():
            return
        stored = self.store.size(blob_key(sha256))
        if stored is not None and (size is None or stored == size):
            self._fetch(sha256, stored)

    def _fetch(self, sha256: str, size: int) -> None:
        """Download a blob into the cache; the store refuses bytes that hash otherwise.

        Resumable: the bytes go to tmp/<sha256>.partial, which a download cut short (a
        killed process, a dropped connection) leaves behind; the next fetch hashes them and
        asks the store only for the rest (HTTP Range). A lock on the partial file keeps two
        processes from appending to it at once. A partial whose bytes do not make the blob
        (another object's, damaged) is dropped and the blob fetched whole."""
        assert self.store is not None
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / f"{sha256}.partial"
        final = self.path(sha256)
        started = time.monotonic()
        with (tmp_dir / f"{sha256}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._here(sha256, size):
                return  # another process fetched it while this one waited
            resumed = tmp.is_file() and tmp.stat().st_size > 0
            try:
                self.store.download(blob_key(sha256), tmp, sha256=sha256, size=size, resume=True)
            except StoreError:
                if not resumed:
                    raise
                tmp.unlink(missing_ok=True)  # kept bytes that were not this blob's
                self.store.download(blob_key(sha256), tmp, sha256=sha256, size=size)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp.chmod(0o444)
            os.replace(tmp, final)
            self._remember({sha256: self._stamp(final)})  # hashed while fetched
        self.fetched.append(Blob(sha256, size))
        record = {"sha256": sha256, "size": size, "s": round(time.monotonic() - started, 3)}
        with (self.root / FETCHED_LOG).open("a") as log:
            log.write(json.dumps({**record, "at": time.time(), "pid": os.getpid()}) + "\n")
        self.evict()

    def _used(self, path: Path) -> None:
        """Record a use in the file's access time (its mtime and digest stamp stay)."""
        if self.cache_max is None:
            return
        try:
            st = path.stat()
            os.utime(path, ns=(time.time_ns(), st.st_mtime_ns))
        except OSError:
            return

    def evict(self) -> list[str]:
        """Bring the cache under LLMOPS_STORE_CACHE_MAX: remove the least recently used blobs
        that the store holds and nothing used in the last EVICT_MIN_IDLE_S; what went."""
        if self.store is None or self.cache_max is None:
            return []
        entries = []
        for blob in self:
            try:
                entries.append((self.path(blob.sha256).stat().st_atime, blob))
            except OSError:
                continue
        total = sum(blob.size for _, blob in entries)
        removed: list[str] = []
        now = time.time()
        for used, blob in sorted(entries, key=lambda e: e[0]):
            if total <= self.cache_max or now - used < EVICT_MIN_IDLE_S:
                break
            if self._in_store(blob.sha256, blob.size):
                total -= self.delete(blob.sha256)
                removed.append(blob.sha256)
        return removed

    def put(self, source: Path, progress: Progress | None = None) -> Blob:
        """Store `source` (copied, never moved); a blob that exists already is not rewritten."""
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        # pid first (the stale sweep checks it is gone), then a unique part: two threads or two
        # hosts sharing the folder never write to the same tmp file
        tmp = tmp_dir / f"{os.getpid()}-{uuid.uuid4().hex[:12]}-{source.name}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            with source.open("rb") as reader, tmp.open("wb") as writer:
                while chunk := reader.read(CHUNK):
                    digest.update(chunk)
                    writer.write(chunk)
                    size += len(chunk)
                    if progress:
                        progress(len(chunk))
                writer.flush()
                os.fsync(writer.fileno())
            sha = digest.hexdigest()
            final = self.path(sha)
            if self._here(sha, size):
                tmp.unlink()
                self._touch(sha)
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                tmp.chmod(0o444)
                os.replace(tmp, final)
                self._remember({sha: self._stamp(final)})  # hashed while written
            if self.store is not None and not self._in_store(sha, size):
                self.store.upload(blob_key(sha), final, sha256=sha)
            self._used(final)
            self.evict()
            return Blob(sha, size)
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, data: bytes, name: str = "data") -> Blob:
        """Store bytes (an answer, a scan report) the way `put` stores a file."""
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        staged = tmp_dir / f"{os.getpid()}-{uuid.uuid4().hex[:12]}-{name}.in"
        try:
            staged.write_bytes(data)
            return self.put(staged)
        finally:
            staged.unlink(missing_ok=True)

    def _touch(self, sha256: str) -> None:
        """Mark a blob found already stored as just written: the writer is about to register
        it, and gc never deletes a blob younger than its grace period (an unreferenced blob
        stored long ago would otherwise be deleted between this put and that registration)."""
        path = self.path(sha256)
        try:
            trusted = self._verified_stamps().get(sha256) == self._stamp(path)
            os.utime(path)
            if trusted:  # the content did not change: keep the fast path of `check`
                self._remember({sha256: self._stamp(path)})
        except OSError:
            return  # gone meanwhile: the registration reports the missing blob

    def age_s(self, sha256: str) -> float | None:
        """Seconds since the blob was last written (or found present by a put); None if gone."""
        try:
            return time.time() - self.path(sha256).stat().st_mtime
        except OSError:
            return None

    def read_text(self, sha256: str) -> str:
        return self.local(sha256).read_text(encoding="utf-8")

    def verify(self, sha256: str, progress: Progress | None = None) -> bool:
        """Re-hash a blob; False when it is missing or its content no longer matches."""
        path = self.local(sha256)
        if not path.is_file():
            return False
        digest = hashlib.sha256()
        with path.open("rb") as reader:
            while chunk := reader.read(CHUNK):
                digest.update(chunk)
                if progress:
                    progress(len(chunk))
        return digest.hexdigest() == sha256

    def delete(self, sha256: str) -> int:
        """Remove the copy here (the artifact store keeps its own); the bytes freed."""
        path = self.path(sha256)
        try:
            size = path.stat().st_size
            path.chmod(0o644)
            path.unlink()
            return size
        except FileNotFoundError:
            return 0

    def __iter__(self) -> Iterator[Blob]:
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for folder in sorted(base.iterdir()):
            for path in sorted(folder.iterdir()):
                if len(path.name) == 64:
                    yield Blob(path.name, path.stat().st_size)

    def clean_tmp(self, older_than_s: float = STALE_TMP_S) -> list[str]:
        """Remove abandoned tmp files: older than `older_than_s` and written by a process that
        is gone. Each writer removes its own tmp files itself (put's `finally`); this never
        empties the folder under a writer that is still at work. Returns the names removed."""
        folder = self.root / "tmp"
        if not folder.is_dir():
            return []
        removed = []
        now = time.time()
        for entry in folder.iterdir():
            try:
                if now - entry.lstat().st_mtime < older_than_s or _alive(entry.name):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry.name)
            except OSError:
                continue  # another sweep got there first
        return removed


def _alive(name: str) -> bool:
    """Whether the process whose pid starts a tmp file's name still runs on this host."""
    pid = name.split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's live process (or an odd pid): leave it alone
    return True


def hash_file(path: Path, progress: Progress | None = None) -> Blob:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as reader:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if progress:
                progress(len(chunk))
    return Blob(digest.hexdigest(), size)
