"""Workspace: string the stages together for the CLI and the client: load the specs, observe
the lock file, registry and deployments, and plan."""

from __future__ import annotations

from pathlib import Path

from controller.load.desired import Loaded, load_desired
from controller.observe.applied import observed_from_lock
from controller.observe.drift import observe_arenas, observe_deployments, observe_scans
from controller.observe.registry import observe_registry
from controller.plan.planner import plan
from controller.plan.types import DesiredState, ObservedState, Plan
from controller.state.dvc import restore_missing
from controller.state.lockfile import LOCK_FILE, LockFileError, read_lock
from controller.state.paths import StatePaths
from controller.state.provenance import TrustContext, trust_context
from controller.state.registry.store import Registry


def registry_exists(root: Path) -> bool:
    return StatePaths.for_repo(root).has_registry


def open_registry(root: Path) -> Registry:
    """The registry of this repository (raises RegistryUnavailable with a hint)."""
    return Registry.open(StatePaths.for_repo(root))


def load(root: Path, paths: list[Path] | None = None, overrides: list[str] | None = None) -> Loaded:
    """The specs of the repository at `root`, cached in its state folder. Data files tracked
    by DVC but absent from the checkout (a merged pipeline snapshot) are pulled first."""
    restore_missing(root)
    return load_desired(root, paths, overrides, cache_dir=StatePaths.for_repo(root).cache)


def observe(
    root: Path,
    desired: DesiredState | None = None,
    lock_path: Path | None = None,
    trust: TrustContext | None = None,
) -> ObservedState:
    """Observed state from the lock file and, where there is one, the registry. With a
    trusted `trust`, results only untrusted refs produced (and the trust rule refuses) are
    not observed: the plan recomputes them.

    Without `trust`, the checked-out ref's (trust_context): plan, status and the dashboard on
    main then see what main's apply would, not what a pull request's job stored.

    Raises LockFileError (with a diagnostic) or RegistryUnavailable.
    """
    path = lock_path or root / LOCK_FILE
    observed = observed_from_lock(read_lock(path), source=path.name)
    if desired is not None and registry_exists(root):
        registry = open_registry(root)
        trust = trust or trust_context(root)
        observed = observe_registry(observed, desired, registry, trust)
        observed = observe_deployments(observed, desired, registry)
        observed = observe_arenas(observed, desired, registry)
        observed = observe_scans(observed, desired)
    return observed


def make_plan(
    root: Path, overrides: list[str] | None = None, lock_path: Path | None = None
) -> tuple[Loaded, Plan | None]:
    loaded = load(root, overrides=overrides)
    if not loaded.ok or loaded.desired is None:
        return loaded, None
    try:
        observed = observe(root, loaded.desired, lock_path)
    except LockFileError as err:
        loaded.diagnostics.append(err.diagnostic)
        return loaded, None
    return loaded, plan(loaded.desired, observed)
