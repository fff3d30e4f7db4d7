"""Dashboard, overview page: each resource's status and summary, the plan against the lock
file, drift, and when the lock file last changed (the last apply)."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from controller.load.desired import load_desired
from controller.load.diagnostics import has_errors
from controller.observe.drift import find_drift
from controller.observe.sources import SourceDigests
from controller.observe.status import resource_status
from controller.plan.planner import plan
from controller.state.lockfile import LOCK_FILE, LockFileError
from controller.ui.app import render, ui_state
from controller.ui.state import UiState
from controller.workspace import observe

router = APIRouter()


@dataclass
class Overview:
    statuses: list[Any] = field(default_factory=list)
    actions: list[Any] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    drift: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    last_apply: str | None = None
    last_commit: str | None = None


CACHE_SECONDS = 10.0  # live deployments feed the plan too, so an unchanged fingerprint expires


def fingerprint(state: UiState) -> tuple[Any, ...]:
    """What the overview depends on: the specs, the lock file and the registry's files (their
    modification times), so a page reload reuses the plan until one of them changes."""
    files = [state.root / "llmops.lock", state.paths.root / "registry.db"]
    files.append(state.paths.root / "registry.db-wal")
    specs = state.root / "specs"
    found = sorted(specs.rglob("*.y*ml")) if specs.is_dir() else []
    return tuple(
        (str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in [*files, *found] if p.exists()
    )


def cached_overview(state: UiState) -> Overview:
    key = fingerprint(state)
    cached = state.cache.get("overview")
    now = time.monotonic()
    if cached is not None and cached[0] == key and now - cached[1] < CACHE_SECONDS:
        return cached[2]  # type: ignore[no-any-return]
    page = gather_overview(state)
    state.cache["overview"] = (key, now, page)
    return page


def gather_overview(state: UiState) -> Overview:
    out = Overview()
    lock_path = state.root / LOCK_FILE
    if lock_path.is_file():
        stamp = dt.datetime.fromtimestamp(lock_path.stat().st_mtime, dt.UTC)
        out.last_apply = stamp.strftime("%Y-%m-%d %H:%M:%S UTC")
    out.last_commit = _last_lock_commit(state)
    loaded = load_desired(
        state.root, cache_dir=state.paths.cache, observe_source=SourceDigests(state.paths)
    )
    if has_errors(loaded.diagnostics) or loaded.desired is None:
        out.problems = [d.render() if hasattr(d, "render") else str(d) for d in loaded.diagnostics]
        return out
    try:
        lock = state.lock()
        out.statuses = resource_status(loaded.desired, lock, state.paths)
        current = plan(loaded.desired, observe(state.root, loaded.desired))
        out.actions = [a for a in current.actions if a.kind.value != "noop"]
        out.counts = current.counts()
        registry = state.registry()
        if registry is not None:
            out.drift = find_drift(lock, registry)
    except LockFileError as err:
        out.problems.append(str(err))
    return out


def _last_lock_commit(state: UiState) -> str | None:
    """The newest commit that changed the lock file: short sha, date and subject."""
    try:
        from git import Repo
        from git.exc import GitError

        repo = Repo(state.root, search_parent_directories=False)
        commit = next(repo.iter_commits(paths="llmops.lock", max_count=1), None)
    except (ImportError, GitError, ValueError, OSError):
        return None
    if commit is None:
        return None
    when = commit.committed_datetime.strftime("%Y-%m-%d %H:%M")
    return f"{commit.hexsha[:8]} {when} {commit.summary}"


@router.get("/", response_class=HTMLResponse)
def overview_page(request: Request) -> HTMLResponse:
    return render(
        request, "overview.html", title="Overview", page=cached_overview(ui_state(request))
    )
