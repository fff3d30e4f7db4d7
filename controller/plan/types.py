"""Planning, data types: desired and observed state, actions and the plan (plain data)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from controller.plan.address import Address
from controller.plan.kinds import ActionKind

SpecT = TypeVar("SpecT", bound=BaseModel)


@dataclass(frozen=True)
class Estimate:
    """Rough compute an action costs, for people deciding whether to run it now."""

    unit: str  # "tokens", "samples", "rows", "files"
    amount: int
    seconds: float  # on the reference machine: 2 CPU cores

    def as_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "amount": self.amount, "seconds": round(self.seconds, 1)}


@dataclass(frozen=True)
class DesiredResource:
    """One resource the specs ask for, fully resolved, with its digest.

    `spec` is the validated model (controller/api) the controller reads as attributes;
    `fields` is its JSON form, the one that is digested, written to the lock and diffed.
    """

    address: Address
    kind: str
    name: str
    spec: BaseModel
    fields: Mapping[str, Any]
    inputs: Mapping[str, str]
    depends_on: tuple[str, ...]
    digest: str
    runner: str
    code_version: str  # the runner's code digest (controller/load/code.py)
    file: str = ""
    line: int = 0
    estimate: Estimate | None = None
    code_files: Mapping[str, str] = field(default_factory=dict)  # what code_version hashes

    def __post_init__(self) -> None:
        _typed_address(self)

    def spec_as(self, model: type[SpecT]) -> SpecT:
        """The spec as `model` (e.g. DeploymentSpec); TypeError when this is another kind."""
        if not isinstance(self.spec, model):
            raise TypeError(f"{self.address} is a {self.kind}, not a {model.__name__}")
        return self.spec


@dataclass(frozen=True)
class DesiredState:
    resources: Mapping[str, DesiredResource]
    waves: Mapping[str, int]

    def specs(self, model: type[SpecT]) -> list[tuple[DesiredResource, SpecT]]:
        """(resource, its spec) for every resource whose spec is a `model`, in apply order."""
        return [(r, r.spec) for r in self.resources.values() if isinstance(r.spec, model)]


@dataclass(frozen=True)
class ObservedResource:
    """What the lock file (and later the registry and the cluster) says exists."""

    address: Address
    kind: str
    digest: str
    fields: Mapping[str, Any] = field(default_factory=dict)  # the spec as applied (JSON form)
    inputs: Mapping[str, str] = field(default_factory=dict)
    code_version: str = ""
    outputs: Mapping[str, Any] = field(default_factory=dict)
    drift: str = ""  # set when the world differs from what was applied: why it must be redone
    code_files: Mapping[str, str] = field(default_factory=dict)  # recorded with code_version

    def __post_init__(self) -> None:
        _typed_address(self)


@dataclass(frozen=True)
class ObservedState:
    resources: Mapping[str, ObservedResource]
    source: str = "llmops.lock"
    kind_sources: Mapping[str, str] = field(default_factory=dict)  # kind -> where it was seen

    def source_of(self, kind: str) -> str:
        return self.kind_sources.get(kind, self.source)


@dataclass(frozen=True)
class Action:
    """What apply will do to one resource, and why. `reason` is for people only."""

    kind: ActionKind
    address: Address
    resource_kind: str
    runner: str
    before: str | None
    after: str | None
    reason: str
    wave: int
    changes: tuple[str, ...] = ()
    estimate: Estimate | None = None

    def __post_init__(self) -> None:
        _typed_address(self)

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.kind.value,
            "address": str(self.address),
            "kind": self.resource_kind,
            "runner": self.runner,
            "wave": self.wave,
            "before": self.before,
            "after": self.after,
            "reason": self.reason,
            "changes": list(self.changes),
            "estimate": self.estimate.as_dict() if self.estimate else None,
        }


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]

    @property
    def pending(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind is not ActionKind.NOOP)

    @property
    def has_changes(self) -> bool:
        return bool(self.pending)

    def counts(self) -> dict[str, int]:
        out = {k.value: 0 for k in ActionKind}
        for action in self.actions:
            out[action.kind.value] += 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "changes_pending": self.has_changes,
            "summary": self.counts(),
            "actions": [a.as_dict() for a in self.actions],
        }


def _typed_address(item: Any) -> None:
    """Resources and actions hold an Address; text (a lock file key, a test) is parsed once."""
    if not isinstance(item.address, Address):
        object.__setattr__(item, "address", Address.parse(item.address))
