"""Dashboard, state: the repository, its state folder, registry and lock file, opened once per
server and read by every page."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.state.lockfile import LOCK_FILE, LockFile, read_lock
from controller.state.paths import StatePaths
from controller.state.registry.store import Registry


@dataclass
class UiState:
    """What the pages read. The registry is opened on first use (None without one); the lock
    file is parsed again only when its modification time changes."""

    root: Path
    paths: StatePaths
    _registry: Registry | None = None
    _lock: tuple[float, LockFile] | None = None
    _guard: threading.Lock = field(default_factory=threading.Lock)
    cache: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_repo(cls, root: Path) -> UiState:
        return cls(root=root, paths=StatePaths.for_repo(root))

    @property
    def has_registry(self) -> bool:
        return self._registry is not None or self.paths.has_registry

    def registry(self) -> Registry | None:
        if self._registry is None and self.paths.has_registry:
            with self._guard:
                if self._registry is None:
                    self._registry = Registry.open(self.paths)
        return self._registry

    def lock(self) -> LockFile:
        path = self.root / LOCK_FILE
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return LockFile()
        cached = self._lock
        if cached is None or cached[0] != mtime:
            cached = (mtime, read_lock(path))
            self._lock = cached
        return cached[1]

    def entries(self, kind: str) -> dict[str, Any]:
        """Lock entries of one kind by address, sorted."""
        lock = self.lock()
        return {a: e for a, e in sorted(lock.resources.items()) if e.kind == kind}
