"""Deploy targets, local: the serving runtime as a process on this host (runners/deploy/local)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
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
from runners.deploy import local
from runners.deploy.release import client_key_env

# The variable a local runtime reads its key from (its own name, never the spec's).
SERVE_API_KEY_ENV = "LLMOPS_SERVE_API_KEY"


class LocalTarget(Target):
    kind = "local"
    live_is_local = True

    def deploy(self, request: DeployRequest, progress: DeployProgress) -> DeploymentOutputs:
        name, ref, config = request.name, request.version, request.runtime
        key = request.api_key()
        env = {SERVE_API_KEY_ENV: key} if key else {}
        clients = request.client_keys()
        env |= {client_key_env(client): value for client, value in clients.items()}
        # The keys' hashes are part of the digest so rotating one restarts the server (no
        # "clients" entry without clients: digests from before clients stay the same).
        hashed = {"config": config, "key": hashlib.sha256((key or "").encode()).hexdigest()}
        if clients:
            hashed["clients"] = {
                client: hashlib.sha256(value.encode()).hexdigest()
                for client, value in clients.items()
            }
        digest = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()
        # The rollout's checks need a key the runtime accepts: the single key, else the first
        # client's (its usage and quota then count the two check requests of a rollout).
        check_key = key or next(iter(clients.values()), None)

        def check(port: int) -> str | None:
            return chat_check(port, name, check_key)

        with progress.working(f"  starting {ref} for {name}") as update:
            state, happened = local.rollout(
                name,
                ref,
                config,
                request.paths.deployment(name),
                env,
                digest,
                check=check,
                tick=lambda s: update(f"  starting {ref} for {name} ({s:.0f} s)"),
                key=check_key,
            )
        progress.note(f"  {name}: {happened} {ref} at {state.endpoint}/v1 (pid {state.pid})")
        return DeploymentOutputs(version=ref, target="local", endpoint=f"{state.endpoint}/v1")

    def stop(
        self, name: str, spec: Mapping[str, Any], paths: StatePaths, progress: DeployProgress
    ) -> None:
        stopped = local.stop(paths.deployment(name))
        if stopped:
            progress.note(f"  stopped {name} ({stopped.version}, pid {stopped.pid})")

    def live(self, name: str, spec: Mapping[str, Any], paths: StatePaths) -> LiveDeployment:
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

    def drift(
        self, name: str, spec: Mapping[str, Any], outputs: DeploymentOutputs, paths: StatePaths
    ) -> list[DriftFinding]:
        version = outputs.version
        live = self.live(name, spec, paths)
        if not live.running:
            return [DriftFinding(f"{version} serving", "not running", "llmops apply restarts it")]
        if live.version != version:
            return [DriftFinding(f"{version} serving", f"{live.version} serving", "llmops apply")]
        if not live.ready:
            return [
                DriftFinding(
                    f"{version} ready",
                    f"running (pid {live.pid}) but not ready",
                    "see its log under .llmops/deployments/; llmops apply replaces it",
                )
            ]
        return []

    def status(
        self, name: str, spec: Mapping[str, Any], paths: StatePaths
    ) -> tuple[dict[str, Any] | None, str]:
        process = self.live(name, spec, paths)
        words = (
            f"; live: {process.version} at {process.endpoint}, "
            + ("ready" if process.ready else "not ready")
            if process.running
            else "; live: not running"
        )
        return process.as_dict(), words


def chat_check(port: int, name: str, key: str | None) -> str | None:
    """One real chat completion through the OpenAI route; None when it answers."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={
                "model": name,
                "messages": [{"role": "user", "content": "Hello"}],
                "max_tokens": 8,
            },
            headers=headers,
            timeout=120,
        )
    except httpx.HTTPError as err:
        return f"request failed: {err}"
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    choices = response.json().get("choices") or []
    if not choices:
        return "the answer has no choices"
    return None


register(LocalTarget())
