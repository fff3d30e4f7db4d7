"""Python client: the registry, evaluations and deployments of one repository, for notebooks
and applications (`from llmops import Client`). Read-only over state apply wrote."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.api.deployment import DeploymentSpec
from controller.state.lockfile import (
    LOCK_FILE,
    DeploymentOutputs,
    EvaluationOutputs,
    LockFile,
    read_lock,
)
from controller.state.paths import StatePaths, find_root
from controller.state.registry.store import Registry
from controller.targets.base import target_for


@dataclass(frozen=True)
class ModelVersion:
    ref: str  # "support-assistant@2"
    name: str
    number: int
    path: Path  # a transformers folder (links into the blob store)
    aliases: tuple[str, ...]
    parameters: int | None
    architecture: str | None
    lineage: dict[str, Any]
    metrics: dict[str, dict[str, float]]  # suite -> {"task/metric": value}


@dataclass(frozen=True)
class Evaluation:
    address: str
    subject: str
    suite: str
    baseline: str | None
    metrics: dict[str, float]
    gates: dict[str, str]
    comparison: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(v == "pass" for v in self.gates.values())


@dataclass(frozen=True)
class Deployment:
    name: str
    version: str
    target: str
    endpoint: str | None
    api_key_env: str | None
    running: bool | None  # targets whose live state is read on this host (local)

    def openai(self, api_key: str | None = None) -> Any:
        """An official `openai.OpenAI` client for this deployment (key from its env var)."""
        import openai

        if not self.endpoint:
            raise ValueError(f"deployment {self.name} has no endpoint recorded")
        key = api_key or (os.environ.get(self.api_key_env) if self.api_key_env else None)
        if self.api_key_env and not key:
            raise ValueError(f"set {self.api_key_env} (the key deployment {self.name} requires)")
        return openai.OpenAI(base_url=self.endpoint, api_key=key or "none")


class Client:
    """Entry point: `Client()` finds the repository from the current folder."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = find_root(Path(root) if root else Path.cwd())
        self._registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry.open(StatePaths.for_repo(self.root))
        return self._registry

    def _lock(self) -> LockFile:
        return read_lock(self.root / LOCK_FILE)

    def model(self, ref: str) -> ModelVersion:
        """'name', 'name@3' or 'name@alias'; KeyError when the registry has no such version."""
        version = self.registry.find(ref)
        if version is None:
            raise KeyError(f"no model version '{ref}' in the registry")
        metrics: dict[str, dict[str, float]] = {}
        for metric in version.metrics:
            metrics.setdefault(metric.suite, {})[metric.name] = metric.value
        lineage = version.lineage
        return ModelVersion(
            ref=f"{version.model.name}@{version.number}",
            name=version.model.name,
            number=version.number,
            path=self.registry.materialize(version),
            aliases=tuple(
                sorted(a.name for a in version.model.aliases if a.version_id == version.id)
            ),
            parameters=version.parameters,
            architecture=version.architecture,
            lineage={
                k: getattr(lineage, k)
                for k in ("dataset_version", "experiment_run", "git_commit", "config_digest")
                if lineage is not None
            },
            metrics=metrics,
        )

    def models(self) -> list[ModelVersion]:
        return [
            self.model(f"{m.name}@{v.number}") for m in self.registry.models() for v in m.versions
        ]

    def evaluations(self) -> list[Evaluation]:
        """The evaluations apply recorded in llmops.lock, with metrics, comparisons and gates."""
        out = []
        for address, entry in self._lock().entries("Evaluation"):
            outputs = entry.outputs
            if not isinstance(outputs, EvaluationOutputs) or not outputs.subject:
                continue
            out.append(
                Evaluation(
                    address=str(address),
                    subject=outputs.subject,
                    suite=outputs.suite,
                    baseline=outputs.baseline,
                    metrics=dict(outputs.metrics),
                    gates={n: "pass" if g.passed else "fail" for n, g in outputs.gates.items()},
                    comparison=[row.model_dump() for row in outputs.comparison],
                )
            )
        return out

    def deployments(self) -> list[Deployment]:
        out = []
        for address, entry in self._lock().entries("Deployment"):
            name = address.name
            outputs = entry.outputs
            assert isinstance(outputs, DeploymentOutputs)
            spec = entry.applied_spec(DeploymentSpec)
            target = outputs.target
            kind = target_for(target) if target else None
            live = (
                kind.live(name, entry.spec, StatePaths.for_repo(self.root))
                if kind and kind.live_is_local
                else None
            )
            running = live.running if live else None
            out.append(
                Deployment(
                    name=name,
                    version=outputs.version,
                    target=target,
                    endpoint=outputs.endpoint,
                    api_key_env=spec.api_key.env if spec and spec.api_key else None,
                    running=running,
                )
            )
        return out

    def deployment(self, name: str) -> Deployment:
        for deployment in self.deployments():
            if deployment.name == name:
                return deployment
        raise KeyError(f"no deployment '{name}' in {LOCK_FILE}; run llmops apply")
