"""Observation, drift: where the actual state differs from what llmops.lock says was applied.

The plan compares specs with the lock file; drift compares the lock file with the world:
registry versions and aliases, prepared datasets, evaluation results, serving processes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from controller.api.arena import ArenaSpec
from controller.api.deployment import DeploymentSpec
from controller.api.experiment import ExperimentSpec
from controller.plan.types import DesiredState, ObservedState
from controller.state.lockfile import (
    DatasetOutputs,
    DeploymentOutputs,
    EvaluationOutputs,
    ExperimentOutputs,
    LockFile,
    ModelOutputs,
)
from controller.state.registry.store import Registry
from controller.targets.base import target_for


@dataclass(frozen=True)
class Drift:
    address: str
    expected: str
    actual: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        return {
            "address": self.address,
            "expected": self.expected,
            "actual": self.actual,
            "fix": self.fix,
        }


def observe_deployments(
    observed: ObservedState, desired: DesiredState, registry: Registry
) -> ObservedState:
    """A local deployment whose process died, a docker deployment whose container stopped or
    is gone, a KServe deployment whose InferenceService is gone from the cluster, or one that
    serves another version than its model reference names now (an alias moved), is observed
    as drifted: the plan redeploys."""
    resources = dict(observed.resources)
    for address, want in desired.resources.items():
        have = resources.get(address)
        if not isinstance(want.spec, DeploymentSpec) or have is None:
            continue
        target = target_for(want.spec.target)
        live = target.observed_live(want.name, want.fields, have.outputs, registry.paths)
        if live is None:
            continue  # nothing runs, or no cluster or engine answers: nothing is known
        serving = registry.find(want.spec.model)
        expected = f"{serving.model.name}@{serving.number}" if serving else None
        if not live.running:
            note = f"{target.missing()} (was {have.outputs.get('version', 'deployed')})"
        elif expected and target.version_drift(live, expected):
            note = f"serves {live.version}; {want.spec.model} is {expected}"
        else:
            continue
        resources[address] = replace(have, digest=f"drifted:{have.digest}", drift=note)
    return replace(observed, resources=resources)


def observe_arenas(
    observed: ObservedState, desired: DesiredState, registry: Registry
) -> ObservedState:
    """An arena whose model references name other versions now (an alias moved, a new
    version registered) is observed as changed: the plan runs it again, and only the new
    version's battles are new work."""
    resources = dict(observed.resources)
    for address, want in desired.resources.items():
        have = resources.get(address)
        if not isinstance(want.spec, ArenaSpec) or have is None:
            continue
        recorded = dict(have.outputs.get("models") or {})
        moved = []
        for ref in want.spec.registry_refs():
            target = registry.find(ref)
            now = f"{target.model.name}@{target.number}" if target else None
            if ref in recorded and now != recorded[ref]:
                moved.append(f"{ref} is {now or 'missing'} (battled {recorded[ref]})")
        if moved:
            resources[address] = replace(
                have, digest=f"drifted:{have.digest}", drift="; ".join(moved)
            )
    return replace(observed, resources=resources)


def observe_scans(observed: ObservedState, desired: DesiredState) -> ObservedState:
    """A trained run whose experiment asks for a brain scan that its lock entry lacks is
    observed as changed: apply finds the trained version (no retraining) and scans it."""
    resources = dict(observed.resources)
    for address, want in desired.resources.items():
        have = resources.get(address)
        if not isinstance(want.spec, ExperimentSpec) or have is None or not want.spec.inspect:
            continue
        if not have.outputs.get("scan") and not have.drift:
            resources[address] = replace(
                have, digest=f"drifted:{have.digest}", drift="brain scan not recorded yet"
            )
    return replace(observed, resources=resources)


def find_drift(lock: LockFile, registry: Registry) -> list[Drift]:
    """Every lock entry checked against the registry, the stores and the serving processes."""
    drift: list[Drift] = []
    evaluated = registry.evaluated()
    for key, entry in lock.entries():
        address = str(key)
        outputs = entry.outputs
        version = getattr(outputs, "version", "")
        if isinstance(outputs, ModelOutputs | ExperimentOutputs) and version:
            found = registry.find(version)
            if found is None:
                drift.append(
                    Drift(address, f"{version} in the registry", "missing", "llmops apply")
                )
                continue
            if not registry.has_files(found):
                drift.append(
                    Drift(
                        address,
                        f"{version} files in the blob store",
                        "some missing",
                        "llmops models verify; then llmops apply",
                    )
                )
            name = version.split("@", 1)[0]
            for alias in getattr(outputs, "aliases", []):
                target = registry.find(f"{name}@{alias}")
                actual = f"{name}@{target.number}" if target else "no such alias"
                if actual != version:
                    drift.append(
                        Drift(
                            address,
                            f"{name}@{alias} -> {version}",
                            actual,
                            "llmops apply moves it back, or change the Model spec in a PR",
                        )
                    )
        elif isinstance(outputs, DatasetOutputs) and version:
            if registry.datasets.find(f"{key.name}@{version}") is None:
                drift.append(
                    Drift(address, f"prepared version {version[:19]}", "missing", "llmops apply")
                )
        elif isinstance(outputs, EvaluationOutputs) and outputs.subject:
            subject = registry.find(outputs.subject)
            digests = {s for v, s in evaluated if subject and v == subject.spec_digest}
            if subject is None or not digests:
                drift.append(
                    Drift(
                        address,
                        f"results of {outputs.subject} on {outputs.suite}",
                        "missing",
                        "llmops apply",
                    )
                )
        elif isinstance(outputs, DeploymentOutputs) and outputs.target:
            target = target_for(outputs.target)
            for found in target.drift(key.name, entry.spec, outputs, registry.paths):
                drift.append(Drift(address, found.expected, found.actual, found.fix))
    return drift
