"""Deploy targets, docker: a build context, an image built and a container run where an engine
answers (runners/deploy/docker_context, docker_engine); without one, the rendered context is
the result."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller.state.lockfile import DeploymentOutputs
from controller.state.paths import StatePaths
from controller.targets.base import (
    DeployProgress,
    DeployRequest,
    DriftFinding,
    LiveDeployment,
    Target,
    register,
)
from runners.deploy import docker_context, docker_engine, environment
from runners.deploy.release import DeployError, client_key_envs, container_config


def _host(spec: Mapping[str, Any]) -> str | None:
    return (spec.get("docker") or {}).get("host")


class DockerTarget(Target):
    kind = "docker"

    def deploy(self, request: DeployRequest, progress: DeployProgress) -> DeploymentOutputs:
        """Render the build context and build where an engine answers: the image's outputs."""
        name, release = request.name, request.release
        folder = request.paths.deployment(name) / "docker"
        host = _host(release.spec)
        # The key is checked before minutes of building, not after, and so is where it goes.
        key = request.api_key()
        clients = request.client_keys()
        if key or clients:
            environment.check_key_destination(name, host)
        torch = docker_context.torch_source()
        adapter_dirs = {a["name"]: Path(a["dir"]) for a in request.runtime.get("adapters", [])}
        context = docker_context.render_context(
            folder, release, request.model_path, torch=torch, adapter_dirs=adapter_dirs
        )
        with progress.working(f"  building {context.tag} for {name} (torch: {torch.describe()})"):
            outcome = docker_engine.build(context.path, context.tag, host=host)
        progress.note(f"  {name}: {outcome.message}")
        details: dict[str, Any] = {
            "image": context.tag,
            "context_digest": context.digest,
            "built": outcome.built,
        }
        if outcome.built:
            details |= self._run(request, progress, context.tag, outcome.image_id, key, clients)
        return DeploymentOutputs(version=release.model_version, target=self.kind, **details)

    def _run(
        self,
        request: DeployRequest,
        progress: DeployProgress,
        tag: str,
        image_id: str | None,
        key: str | None,
        clients: dict[str, str],
    ) -> dict[str, Any]:
        """Built where an engine answers: run it there and wait until it is ready."""
        name, release = request.name, request.release
        key_env = container_config(release, "docker")["api_key_env"]
        env = {key_env: key} if key and key_env else {}
        key_envs = client_key_envs(release, "docker")
        env |= {key_envs[client]: value for client, value in clients.items()}
        with progress.working(f"  starting {tag} for {name}"):
            running = docker_engine.run(release, tag, env, host=_host(release.spec))
        if image_id and running.image_id != image_id:
            # Another build retagged the image between our build and run.
            raise DeployError(
                f"Deployment {name}: container {running.container} runs {running.image_id}, "
                f"not the image just built ({image_id}); another build moved the tag "
                f"{tag}; apply again"
            )
        progress.note(
            f"  {name}: {running.container} ready at {running.endpoint}/v1 "
            f"({running.image_id[:19]})"
        )
        return {"endpoint": f"{running.endpoint}/v1", "image_id": running.image_id}

    def stop(
        self, name: str, spec: Mapping[str, Any], paths: StatePaths, progress: DeployProgress
    ) -> None:
        if docker_engine.stop(name, host=_host(spec)):
            progress.note(f"  stopped {name} (container {docker_engine.container_name(name)})")

    def live(self, name: str, spec: Mapping[str, Any], paths: StatePaths) -> LiveDeployment | None:
        """The container as its engine (on `docker.host`) reports it; None when no engine
        answers there (then nothing is known either way)."""
        info = docker_engine.inspect_container(name, host=_host(spec))
        if info is None:
            return None
        running = info.status == "running"
        return LiveDeployment(running, info.version, None, None, running)

    def observed_live(
        self, name: str, spec: Mapping[str, Any], outputs: Mapping[str, Any], paths: StatePaths
    ) -> LiveDeployment | None:
        # Only a context rendered where no engine answered has nothing running to check.
        return self.live(name, spec, paths) if outputs.get("built") else None

    def missing(self) -> str:
        return "container not running"

    def version_drift(self, live: LiveDeployment, expected: str) -> bool:
        # A container started before llmops labelled them says nothing of its version.
        return bool(live.version) and live.version != expected

    def drift(
        self, name: str, spec: Mapping[str, Any], outputs: DeploymentOutputs, paths: StatePaths
    ) -> list[DriftFinding]:
        if not outputs.built:
            return []  # only the context was rendered: nothing runs
        state = docker_engine.container_state(name, host=_host(spec))
        if state in (None, "running"):
            return []
        return [
            DriftFinding(
                f"{outputs.version} serving in container {docker_engine.container_name(name)}",
                f"container {state}",
                "llmops apply starts it again",
            )
        ]


register(DockerTarget())
