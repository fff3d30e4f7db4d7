"""Loading, parse cache: parsed spec documents keyed by the file's sha256.

ruamel's round-trip parser is most of the cost of planning a large repository. Documents of
unchanged files are read back from `.llmops/cache/parsed-specs.json`; their round-trip tree
(for positions) is rebuilt only when a diagnostic needs it. Only files that parsed without
problems are cached, and a missing or unreadable cache only costs time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from controller.load.yaml_source import YamlDocument

CACHE_NAME = "parsed-specs.json"
CACHE_VERSION = 1


class ParseCache:
    def __init__(self, cache_dir: Path | None) -> None:
        """`cache_dir` is the state folder's cache (StatePaths.cache); None disables it."""
        self.path = (cache_dir or Path()) / CACHE_NAME
        self.enabled = cache_dir is not None
        self.entries: dict[str, list[dict[str, Any]]] = self._read() if self.enabled else {}
        self.used: set[str] = set()
        self.changed = False

    def _read(self) -> dict[str, list[dict[str, Any]]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def get(self, text: str, file: str) -> list[YamlDocument] | None:
        if not self.enabled:
            return None
        key = self.key(text)
        cached = self.entries.get(key)
        if cached is None:
            return None
        self.used.add(key)
        try:
            return [
                YamlDocument(file, int(d["index"]), d["data"], int(d["line"]), int(d["col"]), text)
                for d in cached
            ]
        except (KeyError, TypeError, ValueError):
            return None

    def put(self, text: str, documents: list[YamlDocument]) -> None:
        if not self.enabled:
            return
        key = self.key(text)
        self.used.add(key)
        self.entries[key] = [
            {"index": d.index, "data": d.data, "line": d.line, "col": d.col} for d in documents
        ]
        self.changed = True

    def save(self) -> None:
        """Keep the entries this run used; write atomically."""
        if not self.enabled:
            return
        if set(self.entries) != self.used:
            self.entries = {k: v for k, v in self.entries.items() if k in self.used}
            self.changed = True
        if not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
            tmp.write_text(
                json.dumps({"version": CACHE_VERSION, "entries": self.entries}), encoding="utf-8"
            )
            os.replace(tmp, self.path)
        except (OSError, ValueError):
            pass
