"""State, locations: the repository root and every folder of the local state (.llmops/).

`StatePaths` is the one place that knows where state lives; `LLMOPS_STATE_DIR` moves all of
it, `LLMOPS_REGISTRY_URL` points the registry at a shared database and `LLMOPS_STORE` at
a shared artifact store (controller/state/artifacts/) that the folder then caches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STATE_DIR = ".llmops"
REGISTRY_URL_ENV = "LLMOPS_REGISTRY_URL"
STATE_DIR_ENV = "LLMOPS_STATE_DIR"
STORE_ENV = "LLMOPS_STORE"


def find_root(start: Path) -> Path:
    """The nearest folder at or above `start` with a specs/ folder (or a .git), else `start`."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / "specs").is_dir():
            return folder
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return start


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
    def cache(self) -> Path:
        """Parsed specs and file digests: only saves time, rebuilt when missing."""
        return self.root / "cache"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def dataset_version(self, name: str, version: str) -> Path:
        """A prepared dataset version's split files, by the version's digest."""
        return self.root / "data" / name / version.removeprefix("sha256:")

    def runs(self, experiment: str) -> Path:
        """An experiment's training runs (each in a folder keyed by the run's digest)."""
        return self.root / "runs" / experiment

    def evaluations(self, suite: str) -> Path:
        """Results of a suite, per model version and suite digest."""
        return self.root / "evals" / suite

    @property
    def endpoint_requests(self) -> Path:
        """Replies of OpenAI-compatible endpoints (suite targets, teachers) by request digest:
        a rerun asks nothing again. Not a mere cache: removing it pays for the requests again."""
        return self.root / "endpoint-requests.sqlite"

    def deployment(self, name: str) -> Path:
        """A deployment's process state, logs and rendered build contexts."""
        return self.root / "deployments" / name

    def pipeline(self, name: str) -> Path:
        """A pipeline's run records, its lock and the worktree its branch is built in."""
        return self.root / "pipelines" / name

    def arena(self, name: str) -> Path:
        """An arena's leaderboards (battles and votes live in the registry database)."""
        return self.root / "arenas" / name

    def scans(self, model: str, number: int) -> Path:
        """Brain scans of one model version, one folder per scan digest."""
        return self.root / "scans" / model / str(number)

    def collected(self, store: str) -> Path:
        """Interactions and feedback a deployment collected into `store`."""
        return self.root / "collected" / store

    @property
    def registry_url(self) -> str:
        return os.environ.get(REGISTRY_URL_ENV) or f"sqlite:///{self.root / 'registry.db'}"

    @property
    def store_url(self) -> str | None:
        """The artifact store (LLMOPS_STORE) this folder caches; None: the folder holds all."""
        return os.environ.get(STORE_ENV, "").strip() or None

    @property
    def has_registry(self) -> bool:
        """A registry is consulted when configured by URL or when the local one was created."""
        return bool(os.environ.get(REGISTRY_URL_ENV)) or (self.root / "registry.db").exists()
