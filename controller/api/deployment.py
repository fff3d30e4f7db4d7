"""Spec API, kind Deployment: which model version serves where, and how."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from controller.api.common import Name, Ref, Resource, SecretRef, Strict, split_ref

# A Deployment's key comes from a variable with this prefix only: a spec names one variable
# of the apply environment, and any other (a CI token, a cloud key) must never be copied into
# a runtime or sent to a container engine. Mirrored in docs/spec-reference.md.
KEY_ENV_PREFIX = "LLMOPS_KEY_"
KEY_ENV_PATTERN = rf"^{KEY_ENV_PREFIX}[A-Z0-9_]+$"


class ApiKeyRef(SecretRef):
    """Where a Deployment's key comes from: a LLMOPS_KEY_* variable or a Kubernetes secret."""

    env: str | None = Field(
        default=None,
        # In the JSON schema for editors; the validator below says what to do instead.
        json_schema_extra={"pattern": KEY_ENV_PATTERN},
        description=f"Name of an environment variable holding the key; it must start with "
        f"{KEY_ENV_PREFIX} (e.g. {KEY_ENV_PREFIX}SUPPORT_ASSISTANT).",
    )

    @field_validator("env")
    @classmethod
    def _key_variable(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(KEY_ENV_PATTERN, value):
            raise ValueError(
                f"api_key names {value}, which is not a key variable: only {KEY_ENV_PREFIX}"
                "<NAME> variables (uppercase) may be named, so a spec cannot hand any other "
                "variable of the apply environment (a CI token, a cloud key) to a runtime"
            )
        return value


# KServeTarget fields added after its first release; absent from a dump at their defaults.
NEW_KSERVE_FIELDS = ("deployment_mode", "force_conflicts", "storage_root")


class KServeTarget(Strict):
    namespace: str = Field(default="default", pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    canary_traffic_percent: int | None = Field(default=None, ge=0, le=100)
    cpu: str = "2"
    memory: str = "4Gi"
    gpu: int = Field(default=0, ge=0)
    image: str | None = Field(default=None, description="Runtime image; llmops' own by default.")
    storage_uri: str | None = Field(
        default=None, description="Where the cluster reads the weights (pvc://, s3://)."
    )
    deployment_mode: Literal["Serverless", "RawDeployment"] | None = Field(
        default=None,
        description="KServe's deployment mode (its annotation); the cluster's default if unset. "
        "Canary traffic needs Serverless.",
    )
    force_conflicts: bool = Field(
        default=False,
        description="Take fields another field manager set on the InferenceService "
        "(server-side apply's force); by default such a conflict fails the apply.",
    )
    storage_root: str | None = Field(
        default=None,
        description="Where the cluster reads registry versions laid out as the registry "
        "stores them (<storage_root>/<model>/<number>/): the base and each LoRA adapter of a "
        "Deployment with `adapters` or an adapter-only model version (KServe's huggingface "
        "runtime, one storageUris entry per version).",
    )

    @model_serializer(mode="wrap")
    def _without_new_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Fields added after specs were applied leave the dump (and so the spec's digest)
        unchanged while at their defaults: an upgrade redeploys nothing."""
        data = handler(self)
        for key in NEW_KSERVE_FIELDS:
            if key in data and data[key] == type(self).model_fields[key].default:
                del data[key]
        return data

    @model_validator(mode="after")
    def _replicas(self) -> KServeTarget:
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be at least min_replicas")
        return self


class DockerTarget(Strict):
    image: str | None = Field(default=None, description="Tag for the built image.")
    base_image: str = "python:3.11-slim"
    host: str | None = Field(
        default=None,
        description="Where to build and run it: the engine's address (DOCKER_HOST, or "
        "CONTAINER_HOST for podman: ssh://user@machine/run/podman/podman.sock, tcp://...); "
        "this machine's engine if unset. An api_key goes to another machine's engine only "
        "when its address is listed in LLMOPS_REMOTE_ENGINES where apply runs.",
    )

    @model_serializer(mode="wrap")
    def _without_new_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """As KServeTarget: `host`, added later, leaves the digest alone while unset."""
        data = handler(self)
        if data.get("host") is None:
            data.pop("host", None)
        return data


# Limits fields added after its first release; absent from a dump at their defaults.
NEW_LIMITS_FIELDS = (
    "header_timeout_s",
    "read_timeout_s",
    "max_pending_connections",
    "feedback_per_s",
    "feedback_burst",
)


# Mirrors runners/serve/config.py `Limits` (same defaults and bounds; a unit test checks):
# the controller's API does not import the runners.
class Limits(Strict):
    """What the serving runtime allows: request size, tokens, time, concurrency, slow clients."""

    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    max_tokens: int = Field(default=512, ge=1)
    timeout_s: float = Field(default=60.0, gt=0)
    max_concurrency: int = Field(default=4, ge=1)
    max_queue: int = Field(default=16, ge=0)
    # Slow-loris defence: how long a client may take to *send* its request.
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds from a request's first byte (or the connection opening) to the "
        "end of its headers; then the connection gets 408 and is closed.",
    )
    read_timeout_s: float = Field(
        default=30.0,
        gt=0,
        # Checked even when unset, so a header_timeout_s above the default is caught too.
        validate_default=True,
        description="Seconds from a request's first byte to the end of its body.",
    )
    max_pending_connections: int = Field(
        default=128,
        ge=1,
        description="Connections still sending a request; beyond it the oldest is closed.",
    )
    # Each accepted /v1/feedback call is a row that may become training data.
    feedback_per_s: float = Field(
        default=1.0,
        gt=0,
        description="Feedback calls per second one client address may make to a keyless "
        "runtime, sustained; beyond it 429 with Retry-After (with a key, the key's holder is "
        "not throttled by address).",
    )
    feedback_burst: int = Field(
        default=30,
        ge=1,
        description="Feedback calls one client address may make at once to a keyless runtime.",
    )

    @field_validator("read_timeout_s")
    @classmethod
    def _timeouts_nest(cls, value: float, info: ValidationInfo) -> float:
        # A field validator rather than a model one, so the diagnostic points at the field.
        header = info.data.get("header_timeout_s")  # absent when itself invalid
        if header is not None and value < header:
            raise ValueError(
                f"read_timeout_s ({value:g}) covers the headers too, so it must be at least "
                f"header_timeout_s ({header:g}); raise read_timeout_s or lower header_timeout_s"
            )
        return value

    @model_serializer(mode="wrap")
    def _without_new_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """As KServeTarget: the slow-loris limits, added later, leave the dump (and so every
        deployment's digest and rendered config) unchanged while at their defaults."""
        data = handler(self)
        for key in NEW_LIMITS_FIELDS:
            if key in data and data[key] == type(self).model_fields[key].default:
                del data[key]
        return data


class Collect(Strict):
    """Opt-in logging of requests, responses and feedback into a store Datasets can read."""

    enabled: bool = False
    sample_rate: float = Field(default=1.0, ge=0, le=1)
    redact_pii: bool = True
    into: Name | None = Field(default=None, description="Store name a Dataset source can name.")

    @model_validator(mode="after")
    def _into(self) -> Collect:
        if self.enabled and self.into is None:
            raise ValueError("collect.enabled needs 'into', the store a Dataset reads from")
        return self


# Mirrors runners/serve/config.py `Embeddings`, whose `model_dir` the controller fills from
# `model` (deploy.py `runtime_config`).
class Embeddings(Strict):
    """OpenAI's /v1/embeddings on this Deployment; off by default (the route answers 404)."""

    enabled: bool = False
    model: Ref | None = Field(
        default=None,
        description="An embedding model (a Model spec: a sentence-transformers folder or a "
        "transformers encoder); unset: the served model's own hidden states, pooled "
        "(runtime transformers only).",
    )
    pooling: Literal["mean", "last"] = Field(
        default="mean",
        description="How token vectors become one: their mean over the input, or the last "
        "token's (a sentence-transformers model's own pooling applies instead).",
    )
    normalize: bool = Field(default=True, description="Scale each vector to length 1 (L2).")


# The single `api_key`'s holder, as usage and metrics name it; no client may take the name.
DEFAULT_CLIENT = "default"


class ClientQuotas(Strict):
    """How much one client may use; a quota left unset does not limit it."""

    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="API requests (/v1/...) in any 60 seconds; beyond it 429 with Retry-After.",
    )
    tokens_per_day: int | None = Field(
        default=None,
        ge=1,
        description="Prompt plus completion tokens per UTC day, counted as responses finish; "
        "once reached, 429 with Retry-After until midnight UTC.",
    )


class Client(Strict):
    """An application calling a Deployment with a key of its own: usage and quotas per client."""

    name: Name = Field(description="How usage, metrics and collected rows name the client.")
    api_key: ApiKeyRef = Field(
        description=f"The client's key: {{env: {KEY_ENV_PREFIX}NAME}} (a variable where apply "
        "runs) or {secret: k8s-secret/key} (target kserve)."
    )
    quotas: ClientQuotas = Field(default_factory=ClientQuotas)


def _key_source(ref: ApiKeyRef) -> str:
    return f"env {ref.env}" if ref.env else f"secret {ref.secret}"


# The deploy targets a spec may name: the built-in ones; controller/targets/base.py `register`
# adds any other (a team's own target, a test's double), so a new target changes no model here.
TARGET_KINDS: list[str] = ["local", "docker", "kserve"]


def _known_target(value: str) -> str:
    if value not in TARGET_KINDS:
        *first, last = (f"'{kind}'" for kind in TARGET_KINDS)
        expected = f"{', '.join(first)} or {last}" if first else last
        # The literal's own error, so validate words it (and suggests a name) as for any enum.
        raise PydanticCustomError(
            "literal_error", "Input should be {expected}", {"expected": expected}
        )
    return value


class DeploymentSpec(Strict):
    model: Ref
    target: Annotated[
        str, AfterValidator(_known_target), Field(json_schema_extra={"enum": TARGET_KINDS})
    ] = "local"
    runtime: Literal["transformers", "llama-cpp"] = "transformers"
    port: int = Field(default=8000, ge=1, le=65535)
    api_key: ApiKeyRef | None = Field(
        default=None,
        description=f"Clients must send this key: {{env: {KEY_ENV_PREFIX}NAME}} (a variable "
        "where apply runs) or {secret: k8s-secret/key} (target kserve).",
    )
    kserve: KServeTarget = Field(default_factory=KServeTarget)
    docker: DockerTarget = Field(default_factory=DockerTarget)
    limits: Limits = Field(default_factory=Limits)
    smoke_suite: Name | None = Field(
        default=None, description="EvalSuite whose first prompts decide readiness."
    )
    collect: Collect = Field(default_factory=Collect)
    clients: list[Client] = Field(
        default_factory=list,
        description="Named clients, each with its own key and quotas; `api_key`, when set "
        f"too, is one more client named '{DEFAULT_CLIENT}', without quotas.",
    )
    embeddings: Embeddings = Field(default_factory=Embeddings)
    adapters: list[Ref] = Field(
        default_factory=list,
        description="LoRA adapter versions of `model` (adapter-only Model versions whose base "
        "is the version `model` names) served by the same process, each under its Model's "
        "name: a request's `model` picks one, the Deployment's own name is the base (runtime "
        "transformers). Target local loads and unloads them in the running process, docker "
        "builds them into the image, kserve serves them with KServe's huggingface runtime "
        "(vLLM's LoRA support).",
    )

    @field_validator("adapters")
    @classmethod
    def _distinct_adapters(cls, adapters: list[str], info: ValidationInfo) -> list[str]:
        if not adapters:
            return adapters
        if info.data.get("runtime") != "transformers":
            raise ValueError("adapters are served by runtime transformers only")
        seen: dict[str, int] = {}
        for index, ref in enumerate(adapters):
            name = split_ref(ref)[0]
            if name in seen:
                raise ValueError(
                    f"adapters[{index}] names the Model '{name}' again (adapters[{seen[name]}]); "
                    "each adapter is served under its Model's name, so names must be unique"
                )
            if name == split_ref(str(info.data.get("model") or ""))[0]:
                raise ValueError(f"adapters[{index}] is the served model itself")
            seen[name] = index
        return adapters

    @field_validator("embeddings")
    @classmethod
    def _embeddings_model(cls, value: Embeddings, info: ValidationInfo) -> Embeddings:
        # A field validator, so the diagnostic points at `embeddings`.
        if value.enabled and value.model is None and info.data.get("runtime") == "llama-cpp":
            raise ValueError(
                "runtime llama-cpp does not embed with the served GGUF; set embeddings.model "
                "to an embedding model (e.g. a sentence-transformers Model)"
            )
        return value

    @field_validator("clients")
    @classmethod
    def _distinct_clients(cls, clients: list[Client], info: ValidationInfo) -> list[Client]:
        # A field validator, so the diagnostic points at `clients`. Two clients with one key
        # source hold one key, and the runtime could not tell them apart.
        names: dict[str, int] = {}
        sources: dict[str, str] = {}
        api_key = info.data.get("api_key")
        if api_key is not None:
            sources[_key_source(api_key)] = f"api_key (client '{DEFAULT_CLIENT}')"
        for index, client in enumerate(clients):
            if client.name == DEFAULT_CLIENT:
                raise ValueError(
                    f"clients[{index}] is named '{DEFAULT_CLIENT}', the name of the holder of "
                    "api_key; give the client another name"
                )
            if client.name in names:
                raise ValueError(
                    f"clients[{index}] repeats the name '{client.name}' of "
                    f"clients[{names[client.name]}]; client names must be unique"
                )
            names[client.name] = index
            source = _key_source(client.api_key)
            if source in sources:
                raise ValueError(
                    f"clients[{index}] ('{client.name}') reads its key from the same {source} "
                    f"as {sources[source]}; each client needs a key of its own"
                )
            sources[source] = f"clients[{index}] ('{client.name}')"
        return clients

    @model_serializer(mode="wrap")
    def _without_new_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """As KServeTarget: `clients` and `embeddings`, added later, leave the dump (and so
        every deployment's digest and rendered config) unchanged while empty or default."""
        data = handler(self)
        if not data.get("clients"):
            data.pop("clients", None)
        if self.embeddings == Embeddings():
            data.pop("embeddings", None)
        if not data.get("adapters"):
            data.pop("adapters", None)
        return data


class Deployment(Resource):
    """A model version served on a target: local process, docker image or KServe."""

    KIND: ClassVar[str] = "Deployment"
    FOLDER: ClassVar[str] = "deployments"
    kind: Literal["Deployment"]
    spec: DeploymentSpec
