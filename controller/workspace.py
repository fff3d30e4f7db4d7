"""Workspace: string the stages together for the CLI, the client and the production loop: load
the specs, observe the lock file, registry and deployments, plan, and apply (one service that
`llmops apply` and the loop share, reporting through apply hooks)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from controller.apply.engine import Applier
from controller.load.desired import Loaded, load_desired
from controller.observe.applied import observed_from_lock
from controller.observe.drift import observe_arenas, observe_deployments, observe_scans
from controller.observe.registry import observe_registry
from controller.observe.sources import SourceDigests
from controller.plan.planner import plan
from controller.plan.types import DesiredState, ObservedState, Plan
from controller.state.apply_mutex import exclusive_apply
from controller.state.dvc import restore_missing
from controller.state.lockfile import LOCK_FILE, LockFileError, read_lock
from controller.state.paths import StatePaths
from controller.state.provenance import TrustContext, mark_state_trusted, trust_context
from controller.state.registry.store import Registry

if TYPE_CHECKING:  # annotations only: plan and validate never load apply's engine
    from controller.apply.engine import ApplyReport
    from controller.apply.hooks import ApplyHooks


def registry_exists(root: Path) -> bool:
    return StatePaths.for_repo(root).has_registry


def open_registry(root: Path) -> Registry:
    """The registry of this repository (raises RegistryUnavailable with a hint)."""
    return Registry.open(StatePaths.for_repo(root))


def load(root: Path, paths: list[Path] | None = None, overrides: list[str] | None = None) -> Loaded:
    """The specs of the repository at `root`, cached in its state folder. Data files tracked
    by DVC but absent from the checkout (a merged pipeline snapshot) are pulled first."""
    restore_missing(root)
    state = StatePaths.for_repo(root)
    return load_desired(
        root, paths, overrides, cache_dir=state.cache, observe_source=SourceDigests(state)
    )


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


def plan_and_apply(
    loaded: Loaded,
    registry: Registry,
    hooks: ApplyHooks,
    *,
    trust: TrustContext | None = None,
    lock_path: Path | None = None,
    skip_deploy: bool = False,
    skip_promote: bool = False,
) -> ApplyReport:
    """Plan against what is observed now and carry the plan out; the caller holds the apply
    lock. Raises LockFileError for a lock file that cannot be read."""
    # Lazily: the engine loads every runner's client (evaluation, deploy targets, Kubernetes);
    # plan, validate and status import this module and never need it.
    assert loaded.desired is not None
    lock = lock_path or loaded.root / LOCK_FILE
    the_plan = plan(loaded.desired, observe(loaded.root, loaded.desired, lock, trust=trust))
    hooks.planned(the_plan)
    applier = Applier(
        loaded,
        registry,
        hooks.console,
        lock,
        skip_deploy=skip_deploy,
        hooks=hooks,
        skip_promote=skip_promote,
        trust=trust,
    )
    return applier.apply(the_plan)


def apply_workspace(
    loaded: Loaded,
    registry: Registry,
    trust: TrustContext,
    hooks: ApplyHooks,
    *,
    wait: bool = True,
    skip_deploy: bool = False,
) -> ApplyReport:
    """`llmops apply`: under the state folder's apply lock (waiting for another apply, or
    ApplyBusy), plan once the lock is held (whatever the other apply did is seen) and apply.

    A trusted ref marks the state folder as main's; an untrusted one never moves an alias in
    the shared registry (main's deployments resolve `model@alias`, so promotion is main's)."""
    state_root = registry.paths.root
    with exclusive_apply(state_root, wait=wait, on_wait=hooks.waiting):
        if trust.trusted:
            mark_state_trusted(state_root, trust)
        return plan_and_apply(
            loaded,
            registry,
            hooks,
            trust=trust,
            skip_deploy=skip_deploy,
            skip_promote=not trust.trusted,
        )
