"""Apply, served deployments: where an applied Deployment answers, read from the lock file,
for the commands and arenas that ask it over its OpenAI-compatible API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from controller.api.deployment import DeploymentSpec
from controller.state.lockfile import LOCK_FILE, DeploymentOutputs, read_lock
from runners.errors import LlmopsError


class ServedError(LlmopsError):
    """A deployment cannot be asked over its API; the message says what to do."""


@dataclass(frozen=True)
class ServedDeployment:
    base_url: str  # the API root its last apply recorded, e.g. http://127.0.0.1:8000/v1
    version: str  # the version it serves, "name@3"
    key_env: str | None  # the LLMOPS_KEY_* variable holding its key; None: no key


def deployment_endpoint(root: Path, deployment: str) -> ServedDeployment:
    """Where an applied Deployment answers (from the lock file), what it serves and the
    variable holding its key; the deployment's own name is the model it serves."""
    entry = read_lock(root / LOCK_FILE).get(f"Deployment/{deployment}")
    outputs = entry.outputs if entry is not None else None
    if entry is None or not isinstance(outputs, DeploymentOutputs) or not outputs.endpoint:
        raise ServedError(
            f"deployment '{deployment}' has no endpoint in {LOCK_FILE}; apply it first"
        )
    spec = entry.applied_spec(DeploymentSpec)
    key = spec.api_key if spec is not None else None
    if key is not None and key.env is None:
        raise ServedError(
            f"deployment '{deployment}' takes its key from a Kubernetes secret; ask it from "
            "where the key is in a LLMOPS_KEY_* variable, or use the version it serves"
        )
    return ServedDeployment(outputs.endpoint, outputs.version, key.env if key else None)
