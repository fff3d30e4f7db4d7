"""Observation, drift: where the actual state differs from what llmops.lock says was applied.

The plan compares specs with the lock file; drift compares the lock file with the world:
registry versions and aliases, prepared datasets, evaluation results, serving processes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from controller.plan.types import DesiredState, ObservedState
from controller.state.lockfile import (
    DatasetOutputs,
    DeploymentOutputs,
    EvaluationOutputs,
    ExperimentOutputs,
    LockFile,
    ModelOutputs,
)
from controller.state.paths import StatePaths
from controller.state.registry.store import Registry


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


@dataclass(frozen=True)
class LiveDeployment:
    """What a local deployment's managed process is doing now."""

    running: bool
    version: str | None
    endpoint: str | None
    pid: int | None
    ready: bool


def live_deployment(paths: StatePaths, name: str) -> LiveDeployment:
    from runners.deploy import local

    state = local.read_state(paths.deployment(name))
    if state is None:
        return LiveDeployment(False, None, None, None, False)
    running = local.is_serving_process(state.pid)
    return LiveDeployment(
        running,
        state.version,
        f"{state.endpoint}/v1",
        state.pid,
        running and local.is_ready(state.port),
    )


def live_kserve(spec: dict[str, Any], name: str) -> LiveDeployment | None:
    """The deployment's InferenceService as the cluster's API server reports it; None when
    no cluster is configured or it does not answer (then nothing is known either way)."""
    from runners.deploy import kserve
    from runners.deploy.release import DeployError

    namespace = (spec.get("kserve") or {}).get("namespace") or "default"
    try:
        api = kserve.api_client()
        api.configuration.retries = 0
        rollout = kserve.status(api, namespace, name)
    except DeployError:
        return None
    if rollout is None:
        return LiveDeployment(False, None, None, None, False)
    return LiveDeployment(True, rollout.model_version, rollout.url, None, rollout.ready)


def live_docker(spec: dict[str, Any], name: str) -> LiveDeployment | None:
    """The deployment's container as its engine (on `docker.host`) reports it; None when no
    engine answers there (then nothing is known either way)."""
    from runners.deploy import docker

    info = docker.inspect_container(name, host=(spec.get("docker") or {}).get("host"))
    if info is None:
        return None
    running = info.status == "running"
    return LiveDeployment(running, info.version, None, None, running)


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
        target_kind = want.spec.get("target")
        if want.kind != "Deployment" or have is None:
            continue
        if target_kind == "kserve":
            found = live_kserve(dict(want.spec), want.name)
        elif target_kind == "docker" and have.outputs.get("built"):
            # Only a context rendered where no engine answered has nothing running to check.
            found = live_docker(dict(want.spec), want.name)
        elif target_kind == "local":
            found = live_deployment(registry.paths, want.name)
        else:
            continue
        if found is None:
            continue  # no cluster or engine answers: nothing is known either way
        live = found
        target = registry.find(str(want.spec["model"]))
        expected = f"{target.model.name}@{target.number}" if target else None
        if not live.running:
            gone = {"kserve": "InferenceService missing", "docker": "container not running"}.get(
                target_kind, "not running"
            )
            note = f"{gone} (was {have.outputs.get('version', 'deployed')})"
        # A container started before llmops labelled them says nothing of its version.
        elif expected and live.version != expected and (live.version or target_kind != "docker"):
            note = f"serves {live.version}; {want.spec['model']} is {expected}"
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
        if want.kind != "Arena" or have is None:
            continue
        recorded = dict(have.outputs.get("models") or {})
        moved = []
        for ref in want.spec.get("models") or []:
            target = registry.find(str(ref))
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
        if want.kind != "Experiment" or have is None or not want.spec.get("inspect"):
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
        elif isinstance(outputs, DeploymentOutputs) and outputs.target == "docker":
            if not outputs.built:
                continue  # only the context was rendered: nothing runs
            from runners.deploy import docker

            host = (entry.spec.get("docker") or {}).get("host")
            state = docker.container_state(key.name, host=host)
            if state not in (None, "running"):
                drift.append(
                    Drift(
                        address,
                        f"{version} serving in container {docker.container_name(key.name)}",
                        f"container {state}",
                        "llmops apply starts it again",
                    )
                )
        elif isinstance(outputs, DeploymentOutputs) and outputs.target == "kserve":
            found = live_kserve(entry.spec, key.name)
            namespace = (entry.spec.get("kserve") or {}).get("namespace") or "default"
            if found is None:
                continue
            if not found.running:
                drift.append(
                    Drift(
                        address,
                        f"{version} serving",
                        f"no InferenceService {namespace}/{key.name}",
                        "llmops apply re-applies it",
                    )
                )
            elif found.version != version:
                drift.append(
                    Drift(address, f"{version} serving", f"{found.version} serving", "llmops apply")
                )
            elif not found.ready:
                drift.append(
                    Drift(
                        address,
                        f"{version} ready",
                        "InferenceService not Ready",
                        f"kubectl -n {namespace} describe inferenceservice {key.name}",
                    )
                )
        elif isinstance(outputs, DeploymentOutputs) and outputs.target == "local":
            live = live_deployment(registry.paths, key.name)
            if not live.running:
                drift.append(
                    Drift(address, f"{version} serving", "not running", "llmops apply restarts it")
                )
            elif live.version != version:
                drift.append(
                    Drift(address, f"{version} serving", f"{live.version} serving", "llmops apply")
                )
            elif not live.ready:
                drift.append(
                    Drift(
                        address,
                        f"{version} ready",
                        f"running (pid {live.pid}) but not ready",
                        "see its log under .llmops/deployments/; llmops apply replaces it",
                    )
                )
    return drift
