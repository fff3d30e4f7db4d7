"""Runner `serve`, config: the JSON a deploy target hands the runtime, validated strictly."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONFIG_ENV = "LLMOPS_SERVE_CONFIG"
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class ConfigError(Exception):
    """A bad config: the message is one line naming the source and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Limits(_Strict):
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    max_tokens: int = Field(default=512, ge=1)
    timeout_s: float = Field(default=60.0, gt=0)
    max_concurrency: int = Field(default=4, ge=1)
    max_queue: int = Field(default=16, ge=0)
    # Slow-loris defence (connections.py). uvicorn times out only idle keep-alive
    # connections, so these bound how long a client may take to *send* its request.
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds from a request's first byte (or the connection opening) to the "
        "end of its headers; then the connection gets 408 and is closed.",
    )
    read_timeout_s: float = Field(
        default=30.0,
        gt=0,
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

    @model_validator(mode="after")
    def _timeouts_nest(self) -> Limits:
        if self.read_timeout_s < self.header_timeout_s:
            raise ValueError(
                f"read_timeout_s ({self.read_timeout_s:g}) covers the headers too, so it "
                f"must be at least header_timeout_s ({self.header_timeout_s:g})"
            )
        return self


class Collect(_Strict):
    enabled: bool = False
    sample_rate: float = Field(default=1.0, ge=0, le=1)
    redact_pii: bool = True
    dir: Path | None = None
    seed: int | None = Field(default=None, description="Seeds the sampling RNG (tests).")

    @model_validator(mode="after")
    def _needs_dir(self) -> Collect:
        if self.enabled and self.dir is None:
            raise ValueError("'enabled' needs 'dir', the folder the JSONL files go to")
        return self


class Smoke(_Strict):
    prompts: list[str] = Field(default_factory=lambda: ["Hello!"], min_length=1)
    max_tokens: int = Field(default=16, ge=1)


class Embeddings(_Strict):
    """/v1/embeddings (embeddings.py): off unless enabled; the served model's pooled hidden
    states, or the embedding model in `model_dir` when set."""

    enabled: bool = False
    model_dir: Path | None = Field(
        default=None,
        description="An embedding model's folder (sentence-transformers or transformers); "
        "unset: the served model's own hidden states (transformers backend only).",
    )
    pooling: Literal["mean", "last"] = "mean"
    normalize: bool = True


# The single `api_key_env`'s holder, and every caller of a keyless runtime, as usage and
# metrics name them; no client may take either name.
DEFAULT_CLIENT = "default"
ANONYMOUS_CLIENT = "anonymous"


class Quotas(_Strict):
    requests_per_minute: int | None = Field(
        default=None, ge=1, description="API requests (/v1/...) in any 60 seconds."
    )
    tokens_per_day: int | None = Field(
        default=None, ge=1, description="Prompt plus completion tokens per UTC day."
    )


class Client(_Strict):
    """A named caller: its key is read from `key_env` at startup, never written here."""

    name: str = Field(pattern=NAME_PATTERN)
    key_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    quotas: Quotas = Field(default_factory=Quotas)


class Adapter(_Strict):
    """A LoRA adapter served beside the base (transformers backend): requests name it."""

    name: str = Field(pattern=NAME_PATTERN, description="The OpenAI model id that picks it.")
    version: str = Field(min_length=1, description="The registry version it is (name@N).")
    dir: Path = Field(description="The adapter's folder; its base must be model_dir.")


class ServeConfig(_Strict):
    name: str = Field(pattern=NAME_PATTERN, description="Deployment name = the OpenAI model id.")
    model_version: str = Field(min_length=1)
    model_dir: Path | None = None
    backend: Literal["transformers", "llama-cpp"] = "transformers"
    gguf_path: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    public_port: int | None = Field(default=None, ge=1, le=65535)
    state_dir: Path | None = Field(
        default=None,
        description="The deployment's state folder: with `name`, who may share public_port.",
    )
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names, besides loopback ones, a connection to a loopback address "
        "may name (request_origin.py): e.g. a name in /etc/hosts for 127.0.0.1.",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Web origins (https://app.example) whose pages may call this server "
        "from a browser; any other Origin is refused with 403.",
    )
    clients: list[Client] = Field(
        default_factory=list,
        description="Named clients, each with its own key, quotas and usage; with api_key_env "
        f"too, that key's holder is the client '{DEFAULT_CLIENT}', without quotas.",
    )
    limits: Limits = Field(default_factory=Limits)
    collect: Collect = Field(default_factory=Collect)
    smoke: Smoke = Field(default_factory=Smoke)
    embeddings: Embeddings = Field(default_factory=Embeddings)
    adapters: list[Adapter] = Field(
        default_factory=list,
        description="LoRA adapters on model_dir served by this one process, each under its "
        "own name (the request's model picks one; `name` is the base); more can be loaded "
        "and unloaded while it runs (POST/DELETE /v2/adapters/{name}).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ServeConfig:
        if self.adapters and self.backend != "transformers":
            raise ValueError("adapters: only backend 'transformers' serves LoRA adapters")
        served = {self.name}
        for index, adapter in enumerate(self.adapters):
            if adapter.name in served:
                raise ValueError(
                    f"adapters[{index}]: the name '{adapter.name}' is taken (the deployment "
                    "or another adapter); each served model needs a name of its own"
                )
            served.add(adapter.name)
        if (
            self.embeddings.enabled
            and self.backend == "llama-cpp"
            and self.embeddings.model_dir is None
        ):
            # llama.cpp computes embeddings only in a context made for them, apart from the
            # generation batch; an embedding model of its own is the supported way.
            raise ValueError(
                "embeddings.model_dir: backend 'llama-cpp' does not embed with the served "
                "GGUF; name an embedding model (a sentence-transformers or transformers folder)"
            )
        if self.backend == "transformers" and self.model_dir is None:
            raise ValueError("backend 'transformers' needs 'model_dir', a transformers folder")
        if self.backend == "llama-cpp" and self.gguf_path is None:
            raise ValueError("backend 'llama-cpp' needs 'gguf_path', the GGUF file to serve")
        if self.public_port is not None and self.public_port == self.port:
            raise ValueError("public_port must differ from port")
        names: set[str] = set()
        variables = {self.api_key_env} - {None}
        for index, client in enumerate(self.clients):
            if client.name in (DEFAULT_CLIENT, ANONYMOUS_CLIENT) or client.name in names:
                raise ValueError(
                    f"clients[{index}]: the name '{client.name}' is taken; names are unique "
                    f"and '{DEFAULT_CLIENT}' and '{ANONYMOUS_CLIENT}' are reserved"
                )
            if client.key_env in variables:
                raise ValueError(
                    f"clients[{index}]: key_env {client.key_env} is another client's variable; "
                    "each client needs a key of its own"
                )
            names.add(client.name)
            variables.add(client.key_env)
        return self

    def keyed(self) -> bool:
        """Whether every route but liveness and readiness needs a key."""
        return self.api_key_env is not None or bool(self.clients)

    def gguf_file(self) -> Path | None:
        """gguf_path, relative paths taken inside model_dir (KServe mounts weights there)."""
        if self.gguf_path is None or self.gguf_path.is_absolute() or self.model_dir is None:
            return self.gguf_path
        return self.model_dir / self.gguf_path

    def api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise ConfigError(
                f"api_key_env: environment variable {self.api_key_env} is not set or empty; "
                "set it to the key clients must send"
            )
        return key

    def client_keys(self) -> dict[str, str]:
        """Each client's key by name (the api_key's holder as DEFAULT_CLIENT), read from the
        environment; ConfigError for a variable unset or a key two clients share."""
        keys = {DEFAULT_CLIENT: key} if (key := self.api_key()) else {}
        for index, client in enumerate(self.clients):
            value = os.environ.get(client.key_env, "")
            if not value:
                raise ConfigError(
                    f"clients[{index}].key_env: environment variable {client.key_env} is not "
                    f"set or empty; set it to the key client '{client.name}' sends"
                )
            # Never print the key: name who holds it.
            same = next((name for name, known in keys.items() if known == value), None)
            if same is not None:
                raise ConfigError(
                    f"clients[{index}].key_env: client '{client.name}' has the same key as "
                    f"'{same}', so requests could not be told apart; give each its own key"
                )
            keys[client.name] = value
        return keys


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse_config(text: str, source: str) -> ServeConfig:
    """The config in `text`; ConfigError names `source` and every bad field on one line."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{source}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a JSON object")
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown field (check the spelling)"
            problems.append(f"{_field(error['loc'])}: {message}")
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


def load_config(argv: list[str], environ: dict[str, str] | None = None) -> ServeConfig:
    """From the path in argv, else from $LLMOPS_SERVE_CONFIG (the JSON itself, or a path)."""
    environ = dict(os.environ) if environ is None else environ
    if len(argv) > 1:
        raise ConfigError(f"expected one config path, got {len(argv)} arguments")
    if argv:
        path = Path(argv[0])
        try:
            return parse_config(path.read_text(encoding="utf-8"), str(path))
        except OSError as err:
            raise ConfigError(f"{path}: cannot read the config: {err.strerror}") from None
    value = environ.get(CONFIG_ENV, "").strip()
    if not value:
        raise ConfigError(
            f"no config: run 'python -m runners.serve CONFIG.json' or set {CONFIG_ENV}"
        )
    if value.startswith("{"):
        return parse_config(value, f"${CONFIG_ENV}")
    try:
        return parse_config(Path(value).read_text(encoding="utf-8"), value)
    except OSError as err:
        raise ConfigError(f"{value} (from ${CONFIG_ENV}): cannot read: {err.strerror}") from None
