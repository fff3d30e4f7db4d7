"""Loading, file inputs: content digests (cached by size and mtime) and row counts."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

CACHE_NAME = "file-digests.json"
# controller.state.paths.STATE_DIR: the embedded state folder (blobs, registry) lives in the
# repository; loading sits below the state layer, so the name is repeated here.
STATE_FOLDER = ".llmops"
CHUNK = 1 << 20
ROW_COUNTED = {".jsonl", ".txt", ".csv", ".tsv"}


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def path_escape(root: Path, relative: str, *, folder_only: bool = False) -> str | None:
    """Why `relative` leaves the repository once symlinks are resolved; None when it stays.

    The spec types refuse '..' and absolute paths; this is the half that needs the disk: the
    path itself and, for a folder, every symlink inside it (they may point anywhere, and
    whatever reads the folder follows them). The state folder is refused too: its blobs and
    registry are not spec inputs. `folder_only` keeps a folder's symlinks inside that folder.
    """
    base = root.resolve()
    state = base / STATE_FOLDER
    target = (root / relative).resolve()
    if not _under(target, base):
        return f"path '{relative}' leaves the repository"
    if _under(target, state):
        return f"path '{relative}' is inside the state folder {STATE_FOLDER}/"
    if not target.is_dir():
        return None
    limit = target if folder_only else base
    for current, dirs, files in os.walk(target):
        for name in sorted([*dirs, *files]):
            entry = Path(current) / name
            if not entry.is_symlink():
                continue
            resolved = entry.resolve()
            if not _under(resolved, limit) or _under(resolved, state):
                shown = (Path(relative) / entry.relative_to(target)).as_posix()
                where = "its folder" if folder_only else "the repository"
                return f"'{shown}' is a symlink out of {where}"
    return None


@dataclass(frozen=True)
class FileInfo:
    digest: str
    size: int
    rows: int | None


class FileDigests:
    """sha256 of files and folders under the repository, reusing earlier work when unchanged.

    The cache is keyed by path, size and modification time, as git and DVC do; it only saves
    time and is rebuilt when missing or unreadable.
    """

    def __init__(self, root: Path, cache_dir: Path | None = None) -> None:
        """`cache_dir` is the state folder's cache (StatePaths.cache); None works uncached."""
        self.root = root
        self.cache_dir = cache_dir
        self.cache_path = (cache_dir or root) / CACHE_NAME
        self.use_cache = cache_dir is not None
        self._cache: dict[str, list[object]] = self._read_cache() if self.use_cache else {}
        self._dirty = False

    def _read_cache(self) -> dict[str, list[object]]:
        try:
            data = json.loads(self.cache_path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def info(self, relative: str) -> FileInfo | None:
        path = self.root / relative
        if path.is_dir():
            return self._dir_info(path)
        if not path.is_file():
            return None
        return self._file_info(path)

    def _file_info(self, path: Path) -> FileInfo:
        stat = path.stat()
        key = path.resolve().as_posix()
        stamp = [stat.st_size, stat.st_mtime_ns]
        cached = self._cache.get(key)
        if cached and cached[:2] == stamp:
            digest, rows = cached[2], cached[3]
            return FileInfo(str(digest), stat.st_size, rows if isinstance(rows, int) else None)
        sha = hashlib.sha256()
        newlines = 0
        last = b""
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                sha.update(chunk)
                newlines += chunk.count(b"\n")
                last = chunk[-1:]
        rows: int | None = None
        if path.suffix.lower() in ROW_COUNTED:
            rows = newlines + (1 if last not in (b"", b"\n") else 0)
            if path.suffix.lower() in (".csv", ".tsv"):
                rows = max(rows - 1, 0)
        digest = "sha256:" + sha.hexdigest()
        self._cache[key] = [*stamp, digest, rows]
        self._dirty = True
        return FileInfo(digest, stat.st_size, rows)

    def _dir_info(self, folder: Path) -> FileInfo:
        sha = hashlib.sha256()
        size = 0
        for current, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(files):
                path = Path(current) / name
                info = self._file_info(path)
                size += info.size
                sha.update(f"{path.relative_to(folder).as_posix()}\0{info.digest}\n".encode())
        return FileInfo("sha256:" + sha.hexdigest(), size, None)

    def save(self) -> None:
        """Persist the cache atomically; failure to write only costs time next run."""
        if not (self.use_cache and self._dirty):
            return
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(self._cache, sort_keys=True))
            os.replace(tmp, self.cache_path)
            self._dirty = False
        except OSError:
            pass
