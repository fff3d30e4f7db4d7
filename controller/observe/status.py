"""Observation, status: each desired resource's state (applied, pending, not applied,
orphaned), what it produced according to the lock file, and what a deployment's target says
serves now."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controller.api.deployment import DeploymentSpec
from controller.observe.leaderboard import shown_ranks
from controller.plan.types import DesiredState
from controller.state.lockfile import (
    ArenaOutputs,
    DatasetOutputs,
    DeploymentOutputs,
    EvaluationOutputs,
    ExperimentOutputs,
    LockFile,
    Outputs,
)
from controller.state.paths import StatePaths
from controller.targets.base import target_for


@dataclass(frozen=True)
class ResourceStatus:
    address: str
    state: str  # applied | pending | not applied | orphaned
    digest: str
    summary: str
    outputs: dict[str, Any] = field(default_factory=dict)
    live: dict[str, Any] | None = None  # a deployment's runtime, as its target reports it

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "address": self.address,
            "state": self.state,
            "digest": self.digest,
            "summary": self.summary,
            "outputs": self.outputs,
        }
        if self.live is not None:
            out["live"] = self.live
        return out


def _arena_top(outputs: ArenaOutputs) -> str:
    """'; #1 name 1042 [1010, 1071]' only where the data ranks a model first alone."""
    if outputs.decided == 0:
        return "; no battle decided (all ties or unparseable), no model ranked"
    board = outputs.leaderboard
    ranks = shown_ranks([s.rank for s in board], outputs.decided)
    if not board or not ranks[0]:
        return "; no model ranked (the rating intervals do not separate them)" if board else ""
    top = board[0]
    first = "#1" if [s.rank for s in board].count(top.rank) == 1 else f"#{ranks[0]} (shared)"
    return f"; {first} {top.model} {top.rating:.0f} [{top.lower:.0f}, {top.upper:.0f}]"


def summarize(outputs: Outputs | None) -> str:
    """One line of what a resource produced."""
    if outputs is None:
        return ""
    if isinstance(outputs, EvaluationOutputs):
        failed = len(outputs.failed_gates)
        total = len(outputs.gates)
        head = f"{outputs.subject} on {outputs.suite}"
        return head + (f"; gates {total - failed}/{total} pass" if total else "")
    if isinstance(outputs, ArenaOutputs):
        head = f"{outputs.battles} battles" + _arena_top(outputs)
        failed, total = len(outputs.failed_gates), len(outputs.gates)
        return head + (f"; gates {total - failed}/{total} pass" if total else "")
    if isinstance(outputs, DatasetOutputs):
        rows = " ".join(f"{k} {v}" for k, v in outputs.rows.items())
        return f"{outputs.version[7:19]} {rows}"
    if isinstance(outputs, DeploymentOutputs):
        return f"{outputs.version} ({outputs.target})"
    if isinstance(outputs, ExperimentOutputs):
        loss = outputs.metrics.get("final_eval_loss")
        return outputs.version + (f"; eval loss {loss:.4g}" if loss else "")
    return str(getattr(outputs, "version", ""))


def resource_status(
    desired: DesiredState, lock: LockFile, paths: StatePaths
) -> list[ResourceStatus]:
    """Desired resources in apply order, then lock entries no spec asks for any more."""
    rows = []
    for address in sorted(desired.resources, key=lambda a: (desired.waves[a], a)):
        resource = desired.resources[address]
        entry = lock.get(address)
        if entry is None:
            state = "not applied"
        elif entry.digest == resource.digest:
            state = "applied"
        else:
            state = "pending"
        outputs = entry.outputs if entry else None
        summary = summarize(outputs)
        live = None
        if isinstance(resource.spec, DeploymentSpec):
            target = target_for(resource.spec.target)
            live, words = target.status(resource.name, resource.fields, paths)
            summary += words
        rows.append(
            ResourceStatus(
                address,
                state,
                resource.digest,
                summary,
                outputs.model_dump(mode="json", exclude_defaults=True) if outputs else {},
                live,
            )
        )
    for address in sorted(set(lock.resources) - set(desired.resources)):
        rows.append(
            ResourceStatus(
                address,
                "orphaned",
                lock.resources[address].digest,
                "in llmops.lock, no longer in the specs",
            )
        )
    return rows
