"""Runner `deploy`, inputs: one release (a deployment at a model version) and its serve config.

Plain data, shared by the docker and KServe targets. The controller builds a `Release` from
`DeploymentSpec.model_dump()`; nothing here imports the controller.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runners.errors import LlmopsError
from runners.weights import adapter_base

# Where the runtime finds things inside a container: KServe's storage initializer puts the
# storageUri's files in /mnt/models, and the docker image copies the model there too.
CONTAINER_MODEL_DIR = "/mnt/models"
# A docker image's LoRA adapters, one folder each by served name, beside the base.
CONTAINER_ADAPTER_DIR = "/mnt/adapters"
CONTAINER_PORT = 8080
CONTAINER_COLLECT_DIR = "/var/lib/llmops/collect"
# A Kubernetes secret's key reaches the container as this variable.
SECRET_KEY_ENV = "LLMOPS_API_KEY"
# A named client's key reaches a local or KServe runtime as this prefix plus the client's name
# (upper case, '-' as '_'): llmops' own variable, as SECRET_KEY_ENV is for the single key.
CLIENT_KEY_ENV_PREFIX = "LLMOPS_CLIENT_KEY_"
SMOKE_MAX_TOKENS = 16
# The Deployment spec's `limits` the runtime's config takes (runners/serve/config.py `Limits`).
LIMIT_FIELDS = (
    "max_body_bytes",
    "max_tokens",
    "timeout_s",
    "max_concurrency",
    "max_queue",
    "header_timeout_s",
    "read_timeout_s",
    "max_pending_connections",
)

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class DeployError(LlmopsError):
    """A deployment cannot be rendered, built or rolled out; the message says what to do."""


@dataclass(frozen=True)
class Release:
    """What to deploy: the deployment's name and spec, the model version, the smoke prompts.

    `spec` is `DeploymentSpec.model_dump()` (every field present, defaults filled in).
    `gguf_file` names the GGUF file inside the model folder for the llama-cpp runtime.
    `adapters` are the LoRA versions served beside the model, (served name, `name@N`), as
    apply resolved the spec's `adapters`; `base_version` is the base `name@N` when the model
    version itself is adapter-only (LoRA without merge). `max_lora_rank` is the largest rank
    among the adapters served (lora_rank), None when not known (a manifest rendered from the
    spec alone).
    """

    name: str
    model_version: str
    spec: dict[str, Any]
    smoke_prompts: list[str] = field(default_factory=list)
    gguf_file: str | None = None
    adapters: tuple[tuple[str, str], ...] = ()
    base_version: str | None = None
    max_lora_rank: int | None = None

    def __post_init__(self) -> None:
        if self.spec.get("runtime") == "llama-cpp" and not self.gguf_file:
            raise DeployError(
                f"deployment {self.name}: runtime llama-cpp needs the GGUF file's name "
                "inside the model folder (gguf_file)"
            )


def api_key_env(release: Release, target: str) -> str | None:
    """The variable the runtime reads the key from inside the container, or None (no key).

    An `env` reference names a variable of the machine running the container, so it only
    makes sense where someone starts the container with that variable (docker). A `secret`
    reference is a Kubernetes secret, mounted into the variable SECRET_KEY_ENV.
    """
    ref = release.spec.get("api_key")
    if not ref:
        return None
    if ref.get("env"):
        if target == "kserve":
            raise DeployError(
                f"deployment {release.name}: api_key.env ({ref['env']}) names a variable of "
                "this machine, which a KServe pod cannot see; store the key in a Kubernetes "
                "secret and write api_key: {secret: <secret-name>/<key>}"
            )
        return str(ref["env"])
    return SECRET_KEY_ENV


def client_key_env(client: str) -> str:
    """The variable a local or KServe runtime reads client `client`'s key from."""
    return CLIENT_KEY_ENV_PREFIX + client.upper().replace("-", "_")


def client_key_envs(release: Release, target: str) -> dict[str, str]:
    """Each client's key variable inside the container, by client name. As api_key_env: on
    docker an `env` reference is passed through under its own name (`docker run -e NAME`),
    on KServe a `secret` reference is mounted into client_key_env(name)."""
    out = {}
    for client in release.spec.get("clients") or []:
        name, ref = client["name"], client["api_key"]
        if target == "kserve" and not ref.get("secret"):
            raise DeployError(
                f"deployment {release.name}: client {name}'s api_key.env ({ref['env']}) names "
                "a variable of this machine, which a KServe pod cannot see; store the key in a "
                "Kubernetes secret and write api_key: {secret: <secret-name>/<key>}"
            )
        if target != "kserve" and not ref.get("env"):
            raise DeployError(
                f"deployment {release.name}: client {name}'s api_key {{secret: {ref['secret']}}} "
                f"names a Kubernetes secret, which only target kserve can read; use "
                f"{{env: VARIABLE}} for target {target}"
            )
        out[name] = client_key_env(name) if target == "kserve" else str(ref["env"])
    return out


def runtime_clients(
    clients: list[dict[str, Any]], key_envs: dict[str, str]
) -> list[dict[str, Any]]:
    """The runtime config's `clients` (runners/serve/config.py): name, key variable, quotas;
    never a key."""
    return [
        {"name": c["name"], "key_env": key_envs[c["name"]], "quotas": dict(c.get("quotas") or {})}
        for c in clients
    ]


def container_config(release: Release, target: str) -> dict[str, Any]:
    """The runtime's config (runners/serve's contract) for a container of `target`."""
    spec = release.spec
    collect = spec["collect"]
    gguf_path = f"{CONTAINER_MODEL_DIR}/{release.gguf_file}" if release.gguf_file else None
    return (
        {
            "name": release.name,
            "model_version": release.model_version,
            "model_dir": CONTAINER_MODEL_DIR,
            "backend": spec["runtime"],
            "gguf_path": gguf_path,
            "host": "0.0.0.0",
            "port": CONTAINER_PORT,
            "public_port": None,
            "api_key_env": api_key_env(release, target),
            # A spec's dump leaves out the slow-loris limits at their defaults (so adding them
            # changed no digest); absent here too, the runtime's equal defaults apply.
            "limits": {key: spec["limits"][key] for key in LIMIT_FIELDS if key in spec["limits"]},
            "collect": {
                "enabled": bool(collect["enabled"]),
                "sample_rate": collect["sample_rate"],
                "redact_pii": bool(collect["redact_pii"]),
                "dir": f"{CONTAINER_COLLECT_DIR}/{collect.get('into') or release.name}",
            },
            # Without prompts of its own the runtime's default smoke prompt applies.
            "smoke": {"max_tokens": SMOKE_MAX_TOKENS}
            | ({"prompts": list(release.smoke_prompts)} if release.smoke_prompts else {}),
        }
        | _clients_entry(release, target)
        | _embeddings_entry(release)
        | _adapters_entry(release)
    )


def _adapters_entry(release: Release) -> dict[str, Any]:
    # Absent without adapters, so earlier configs stay; each adapter's folder in the image.
    if not release.adapters:
        return {}
    return {
        "adapters": [
            {"name": name, "version": version, "dir": adapter_container_dir(name)}
            for name, version in release.adapters
        ]
    }


def _embeddings_entry(release: Release) -> dict[str, Any]:
    # Absent when off (a spec's dump leaves `embeddings` out then), so earlier configs stay.
    # A container pools its served model; an embedding model of its own is local-only
    # (controller/apply/deploy.py refuses one for other targets).
    settings = release.spec.get("embeddings") or {}
    if not settings.get("enabled"):
        return {}
    keys = ("pooling", "normalize")
    return {"embeddings": {"enabled": True} | {k: settings[k] for k in keys if k in settings}}


def _clients_entry(release: Release, target: str) -> dict[str, Any]:
    # Absent without clients, so configs and manifests rendered before clients stay the same.
    clients = release.spec.get("clients") or []
    if not clients:
        return {}
    return {"clients": runtime_clients(clients, client_key_envs(release, target))}


def kserve_name(release: Release) -> str:
    """The InferenceService name; Knative names revisions '<name>-predictor-00001' (<= 63)."""
    name = release.name
    if not _DNS_1035.match(name) or len(name) > 47:
        raise DeployError(
            f"deployment name '{name}' cannot name an InferenceService: it must start with a "
            "letter and have at most 47 characters (Knative adds '-predictor-00001'); "
            "rename the deployment"
        )
    return name


def image_tag(release: Release) -> str:
    """The docker target's tag: the spec's `docker.image`, else one from the model version."""
    given = release.spec.get("docker", {}).get("image")
    if given:
        return str(given)
    version = re.sub(r"[^A-Za-z0-9_.-]+", "-", release.model_version).strip("-.")[:128]
    return f"llmops/{release.name}:{version or 'latest'}"


def served_adapters(release: Release) -> list[tuple[str, str]]:
    """(served name, version) of each adapter: as apply resolved them, else as the spec names
    them (a report's manifest diff renders from the spec alone)."""
    if release.adapters:
        return list(release.adapters)
    return [(str(ref).split("@", 1)[0], str(ref)) for ref in release.spec.get("adapters") or []]


def adapter_container_dir(name: str) -> str:
    """Where an adapter's files are inside a container (docker image, KServe pod)."""
    return f"{CONTAINER_ADAPTER_DIR}/{name}"


def config_adapters(config: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """A release's `adapters` from the runtime config apply works out (runners/serve's
    `adapters`): the same names and versions the local runtime serves."""
    return tuple((a["name"], a["version"]) for a in config.get("adapters") or [])


def lora_rank(folders: list[Path | str]) -> int | None:
    """The largest LoRA rank among adapter folders (adapter_config.json's `r` and any
    `rank_pattern` entry); None when no folder is an adapter."""
    ranks: list[int] = []
    for folder in folders:
        path = Path(folder) / "adapter_config.json"
        if not path.is_file():
            continue
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise DeployError(f"{path}: not JSON ({err}); save the adapter again") from err
        values = [found.get("r"), *(found.get("rank_pattern") or {}).values()]
        ranks.extend(int(v) for v in values if isinstance(v, int) and not isinstance(v, bool))
    return max(ranks) if ranks else None


def base_version_of(model_dir: Path | str | None) -> str | None:
    """The base version `name@N` of an adapter-only model folder (the registry lays versions
    out as <model>/<number>, and an adapter names its base's folder); None for a full one."""
    base = adapter_base(model_dir) if model_dir is not None else None
    if base is None:
        return None
    found = base.resolve()
    return f"{found.parent.name}@{found.name}"
