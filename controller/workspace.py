"""Workspace: find the repository, load and resolve its specs, observe state, plan."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from controller.load.compose import Run, parse_overrides
from controller.load.diagnostics import Diagnostic, has_errors, sort_diagnostics
from controller.load.loader import LoadedSpec, load_specs
from controller.load.resolve import resolve
from controller.observe.applied import observed_from_lock
from controller.observe.registry import observe_registry
from controller.plan.planner import plan
from controller.plan.types import DesiredState, ObservedState, Plan
from controller.state.lockfile import LOCK_FILE, LockFileError, read_lock
from controller.state.paths import REGISTRY_URL_ENV, StatePaths
from controller.state.registry.store import Registry


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


@dataclass
class Loaded:
    root: Path
    specs: list[LoadedSpec] = field(default_factory=list)
    desired: DesiredState | None = None
    runs: dict[str, list[Run]] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.desired is not None and not has_errors(self.diagnostics)


def load_desired(
    root: Path, paths: list[Path] | None = None, overrides: list[str] | None = None
) -> Loaded:
    """Specs -> desired state, with every problem collected as a diagnostic."""
    parsed, override_problems = parse_overrides(overrides or [])
    loaded = load_specs(root, paths)
    result = Loaded(root, loaded.specs, diagnostics=[*override_problems, *loaded.diagnostics])
    if has_errors(result.diagnostics):
        result.diagnostics = sort_diagnostics(result.diagnostics)
        return result
    resolution = resolve(loaded.specs, root, parsed)
    result.diagnostics = sort_diagnostics([*result.diagnostics, *resolution.diagnostics])
    result.runs = resolution.runs
    result.desired = resolution.desired
    return result


def registry_exists(root: Path) -> bool:
    """A registry is consulted when configured by URL or when the local one was created."""
    paths = StatePaths.for_repo(root)
    return bool(os.environ.get(REGISTRY_URL_ENV)) or (paths.root / "registry.db").exists()


def open_registry(root: Path) -> Registry:
    """The registry of this repository (raises RegistryUnavailable with a hint)."""
    return Registry.open(StatePaths.for_repo(root))


def observe(
    root: Path, desired: DesiredState | None = None, lock_path: Path | None = None
) -> ObservedState:
    """Observed state from the lock file and, where there is one, the registry.

    Raises LockFileError (with a diagnostic) or RegistryUnavailable.
    """
    path = lock_path or root / LOCK_FILE
    observed = observed_from_lock(read_lock(path), source=path.name)
    if desired is not None and registry_exists(root):
        from controller.observe.drift import observe_deployments

        registry = open_registry(root)
        observed = observe_registry(observed, desired, registry)
        observed = observe_deployments(observed, desired, registry)
    return observed


def make_plan(
    root: Path, overrides: list[str] | None = None, lock_path: Path | None = None
) -> tuple[Loaded, Plan | None]:
    loaded = load_desired(root, overrides=overrides)
    if not loaded.ok or loaded.desired is None:
        return loaded, None
    try:
        observed = observe(root, loaded.desired, lock_path)
    except LockFileError as err:
        loaded.diagnostics.append(err.diagnostic)
        return loaded, None
    return loaded, plan(loaded.desired, observed)
