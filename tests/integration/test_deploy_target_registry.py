"""A fourth deploy target, registered by name from this test, is used by apply, plan's drift
observation, `llmops drift` and `llmops status` with no other module changed: the Target
interface (controller/targets/base.py) is the only thing they call."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from controller.cli.main import app
from controller.state.lockfile import DeploymentOutputs
from controller.state.paths import StatePaths
from controller.targets.base import (
    DeployProgress,
    DeployRequest,
    DriftFinding,
    LiveDeployment,
    Target,
    register,
    unregister,
)
from tests.tiny import model_spec


class MemoryTarget(Target):
    """Serves nothing: remembers what it was asked to deploy, as a cluster would."""

    kind = "memory"
    live_is_local = True

    def __init__(self) -> None:
        self.serving: dict[str, str] = {}
        self.calls: list[str] = []

    def deploy(self, request: DeployRequest, progress: DeployProgress) -> DeploymentOutputs:
        self.calls.append(f"deploy {request.name} {request.version}")
        with progress.working(f"  placing {request.version} in memory") as update:
            update(f"  placing {request.version} in memory (runtime {request.runtime['backend']})")
        self.serving[request.name] = request.version
        progress.note(f"  {request.name}: {request.version} in memory")
        return DeploymentOutputs(
            version=request.version, target=self.kind, endpoint=f"memory://{request.name}"
        )

    def stop(
        self, name: str, spec: Mapping[str, Any], paths: StatePaths, progress: DeployProgress
    ) -> None:
        self.calls.append(f"stop {name}")
        self.serving.pop(name, None)

    def live(self, name: str, spec: Mapping[str, Any], paths: StatePaths) -> LiveDeployment:
        version = self.serving.get(name)
        return LiveDeployment(version is not None, version, f"memory://{name}", None, True)

    def drift(
        self, name: str, spec: Mapping[str, Any], outputs: DeploymentOutputs, paths: StatePaths
    ) -> list[DriftFinding]:
        if name in self.serving:
            return []
        return [DriftFinding(f"{outputs.version} in memory", "forgotten", "llmops apply")]

    def status(
        self, name: str, spec: Mapping[str, Any], paths: StatePaths
    ) -> tuple[dict[str, Any] | None, str]:
        live = self.live(name, spec, paths)
        return live.as_dict(with_pid=False), f"; live in memory: {live.version}"


@pytest.fixture
def memory() -> Iterator[MemoryTarget]:
    target = register(MemoryTarget())
    yield target
    unregister("memory")


def _cli(root: Path, *args: str) -> Any:
    result = CliRunner().invoke(app, [*args, "--root", str(root)])
    return result


def test_a_fourth_target_is_used_by_apply_drift_and_status(
    tmp_path: Path, tiny_model: Path, memory: MemoryTarget
) -> None:
    root = tmp_path / "repo"
    (root / "specs/models").mkdir(parents=True)
    (root / "specs/deployments").mkdir(parents=True)
    shutil.copytree(tiny_model, root / "models/tiny")
    (root / "specs/models/tiny.yaml").write_text(
        model_spec("tiny", {"type": "local", "path": "models/tiny"})
    )
    (root / "specs/deployments/mem.yaml").write_text(
        "apiVersion: llmops/v1\nkind: Deployment\nmetadata: {name: mem}\n"
        "spec: {model: tiny, target: memory}\n"
    )
    applied = _cli(root, "apply")
    assert applied.exit_code == 0, applied.output
    assert memory.calls == ["deploy mem tiny@1"]
    lock = json.loads((root / "llmops.lock").read_text())
    outputs = next(e["outputs"] for a, e in lock["resources"].items() if a == "Deployment/mem")
    assert outputs["target"] == "memory" and outputs["endpoint"] == "memory://mem"

    status = _cli(root, "status", "--json")
    assert status.exit_code == 0, status.output
    rows = json.loads(status.stdout)["resources"]
    row = next(r for r in rows if r["address"] == "Deployment/mem")
    assert row["live"] == {
        "running": True,
        "ready": True,
        "version": "tiny@1",
        "endpoint": "memory://mem",
    }
    assert "live in memory: tiny@1" in row["summary"]
    assert _cli(root, "drift", "--json").exit_code == 0

    memory.serving.clear()  # the target lost it, out of band
    drift = _cli(root, "drift", "--json")
    assert drift.exit_code == 3  # drift found
    found = json.loads(drift.stdout)["drift"]
    assert {
        "address": "Deployment/mem",
        "expected": "tiny@1 in memory",
        "actual": "forgotten",
        "fix": "llmops apply",
    } in found
    plan = _cli(root, "plan", "--json")
    action = next(a for a in json.loads(plan.stdout)["actions"] if a["address"] == "Deployment/mem")
    assert action["action"] != "noop" and "not running" in action["reason"]

    healed = _cli(root, "apply")
    assert healed.exit_code == 0, healed.output
    assert memory.calls == ["deploy mem tiny@1", "deploy mem tiny@1"]
    assert memory.serving == {"mem": "tiny@1"}

    (root / "specs/deployments/mem.yaml").unlink()
    removed = _cli(root, "apply")
    assert removed.exit_code == 0, removed.output
    assert memory.calls[-1] == "stop mem" and memory.serving == {}
