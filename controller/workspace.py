"""Workspace: find the repository, load and resolve its specs, observe state, plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from controller.load.compose import Run, parse_overrides
from controller.load.diagnostics import Diagnostic, has_errors, sort_diagnostics
from controller.load.loader import LoadedSpec, load_specs
from controller.load.resolve import resolve
from controller.observe.lock import observed_from_lock
from controller.plan.planner import plan
from controller.plan.types import DesiredState, ObservedState, Plan
from controller.state.lockfile import LOCK_FILE, LockFileError, read_lock


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


def observe(root: Path, lock_path: Path | None = None) -> ObservedState:
    """Observed state from the lock file; raises LockFileError with a diagnostic."""
    path = lock_path or root / LOCK_FILE
    return observed_from_lock(read_lock(path), source=path.name)


def make_plan(
    root: Path, overrides: list[str] | None = None, lock_path: Path | None = None
) -> tuple[Loaded, Plan | None]:
    loaded = load_desired(root, overrides=overrides)
    if not loaded.ok or loaded.desired is None:
        return loaded, None
    try:
        observed = observe(root, lock_path)
    except LockFileError as err:
        loaded.diagnostics.append(err.diagnostic)
        return loaded, None
    return loaded, plan(loaded.desired, observed)
