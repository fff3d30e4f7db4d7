"""Deploy targets, the interface: deploy, stop, live state, drift and status for one target kind.

After gitops-engine's health checks (one small function per kind, found by lookup): apply,
observe, status, the dashboard and the client ask `target_for(spec["target"])` instead of
branching on the target's name, so a new target is one module that registers itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from controller.api.deployment import TARGET_KINDS
from controller.state.lockfile import DeploymentOutputs
from controller.state.paths import StatePaths
from runners.deploy.release import DeployError, Release


@dataclass(frozen=True)
class LiveDeployment:
    """What a deployment is doing now, as its target reports it."""

    running: bool
    version: str | None
    endpoint: str | None
    pid: int | None
    ready: bool

    def as_dict(self, with_pid: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "running": self.running,
            "ready": self.ready,
            "version": self.version,
            "endpoint": self.endpoint,
        }
        return out | ({"pid": self.pid} if with_pid else {})


@dataclass(frozen=True)
class DriftFinding:
    """One way the world differs from what the lock file says was deployed."""

    expected: str
    actual: str
    fix: str


class DeployProgress(Protocol):
    """How a target reports while it works: apply's hooks implement it (a terminal printer
    in `llmops apply`)."""

    def note(self, message: str) -> None: ...

    def working(self, message: str) -> AbstractContextManager[Callable[[str], None]]:
        """A spinner for long work; the callable replaces its message."""
        ...


@dataclass(frozen=True)
class DeployRequest:
    """Everything target-neutral that apply works out before a target rolls a deployment out."""

    name: str
    spec: Mapping[str, Any]
    version: str  # the registry version served, `model@N`
    runtime: dict[str, Any]  # the serving runtime's config (runners/serve)
    release: Release  # what docker and KServe render from
    model_path: Path
    paths: StatePaths
    api_key: Callable[[], str | None]  # read only by targets that pass a key on
    # Named clients' keys by client name (env-sourced ones; a cluster reads secrets itself).
    client_keys: Callable[[], dict[str, str]] = dict


class Target(ABC):
    """One deploy target kind. Implementations register with `register` under `kind`."""

    kind: ClassVar[str]
    # Whether `live` is cheap and local (no network): the dashboard and the client show it.
    live_is_local: ClassVar[bool] = False
    # Whether the runtime reads its API key from a cluster secret ({secret: ...}) itself.
    reads_secret_keys: ClassVar[bool] = False

    @abstractmethod
    def deploy(self, request: DeployRequest, progress: DeployProgress) -> DeploymentOutputs:
        """Roll the request out and wait until it serves; the lock entry's outputs."""

    @abstractmethod
    def stop(
        self, name: str, spec: Mapping[str, Any], paths: StatePaths, progress: DeployProgress
    ) -> None:
        """Stop what was deployed under `name` with `spec` (the recorded one: it was removed)."""

    @abstractmethod
    def live(self, name: str, spec: Mapping[str, Any], paths: StatePaths) -> LiveDeployment | None:
        """What serves now; None when nothing answers to say (no engine, no cluster)."""

    def observed_live(
        self, name: str, spec: Mapping[str, Any], outputs: Mapping[str, Any], paths: StatePaths
    ) -> LiveDeployment | None:
        """`live`, for the plan's drift observation: None where nothing can be running."""
        return self.live(name, spec, paths)

    def missing(self) -> str:
        """How the plan names a deployment whose runtime is gone."""
        return "not running"

    def version_drift(self, live: LiveDeployment, expected: str) -> bool:
        """Whether a running deployment serves another version than its spec names now."""
        return live.version != expected

    @abstractmethod
    def drift(
        self, name: str, spec: Mapping[str, Any], outputs: DeploymentOutputs, paths: StatePaths
    ) -> list[DriftFinding]:
        """How the world differs from the recorded outputs (`llmops drift`)."""

    def status(
        self, name: str, spec: Mapping[str, Any], paths: StatePaths
    ) -> tuple[dict[str, Any] | None, str]:
        """(live state for `llmops status --json`, the words appended to its summary)."""
        return None, ""

    def manifest_lines(self, name: str, spec: Mapping[str, Any], version: str) -> list[str]:
        """What the target applies, as YAML lines for the report's manifest diff; [] where it
        applies no manifests."""
        return []


TARGETS: dict[str, Target] = {}
BUILTIN_TARGETS = frozenset(TARGET_KINDS)


def register(target: Target) -> Target:
    """Make `target` the implementation of its kind (the last registration wins), and a kind
    Deployment specs may name."""
    TARGETS[target.kind] = target
    if target.kind not in TARGET_KINDS:
        TARGET_KINDS.append(target.kind)
    return target


def unregister(kind: str) -> None:
    """Forget a target registered by `register` (the built-in ones stay)."""
    if kind in BUILTIN_TARGETS:
        return
    TARGETS.pop(kind, None)
    if kind in TARGET_KINDS:
        TARGET_KINDS.remove(kind)


def target_for(kind: str | None) -> Target:
    """The implementation of a target kind; a deployment without one is local."""
    found = TARGETS.get(kind or "local")
    if found is None:
        raise DeployError(f"no deploy target '{kind}'; known: {', '.join(sorted(TARGETS))}")
    return found
