"""State, locations: where the registry database, blobs and caches live (.llmops/)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STATE_DIR = ".llmops"
REGISTRY_URL_ENV = "LLMOPS_REGISTRY_URL"
STATE_DIR_ENV = "LLMOPS_STATE_DIR"


@dataclass(frozen=True)
class StatePaths:
    """The embedded defaults: everything under <repo>/.llmops unless configured otherwise."""

    root: Path

    @classmethod
    def for_repo(cls, repo: Path) -> StatePaths:
        configured = os.environ.get(STATE_DIR_ENV)
        return cls(Path(configured).resolve() if configured else repo / STATE_DIR)

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def views(self) -> Path:
        """Per-version folders of links into the blob store, loadable by transformers."""
        return self.root / "models"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def registry_url(self) -> str:
        return os.environ.get(REGISTRY_URL_ENV) or f"sqlite:///{self.root / 'registry.db'}"
