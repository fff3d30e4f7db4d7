"""Spec API, shared pieces: the envelope, names, references and typed building blocks."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

API_VERSION = "llmops/v1"
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
REF_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(@[A-Za-z0-9][A-Za-z0-9._-]{0,62})?$"
_REF_RE = re.compile(REF_PATTERN)


class Strict(BaseModel):
    """Base for every spec object: unknown fields are errors, values are not coerced silently."""

    model_config = ConfigDict(extra="forbid", populate_by_name=False, frozen=False)


Name = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        max_length=63,
        description="DNS-style name: lowercase letters, digits and '-', at most 63 characters.",
    ),
]

Ref = Annotated[
    str,
    Field(
        pattern=REF_PATTERN,
        description="A name with an optional version or alias: 'support-assistant@champion', "
        "'smollm2-135m@3'.",
    ),
]


def split_ref(ref: str) -> tuple[str, str | None]:
    """Split 'name@selector' into (name, selector); the selector is a version or an alias."""
    name, _, selector = ref.partition("@")
    return name, selector or None


def _relative_path(value: str) -> str:
    if not value or value.strip() != value:
        raise ValueError("a path must be non-empty and have no leading or trailing spaces")
    if value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", value):
        raise ValueError(
            "absolute paths are not allowed; write the path relative to the repository root"
        )
    if "\x00" in value:
        raise ValueError("a path cannot contain NUL characters")
    return value


RepoPath = Annotated[
    str,
    AfterValidator(_relative_path),
    Field(description="A path relative to the repository root; it may not leave the repository."),
]


class SecretRef(Strict):
    """Where a secret comes from at run time; never the secret itself."""

    env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of an environment variable holding the secret.",
    )
    secret: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?/[A-Za-z0-9._-]+$",
        description="A Kubernetes secret and key, 'secret-name/key'.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.secret is None):
            raise ValueError("give exactly one of 'env' or 'secret'")
        return self


class Metadata(Strict):
    """Identity and bookkeeping shared by every kind."""

    name: Name
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    owners: list[str] = Field(default_factory=list)


class Resource(Strict):
    """The envelope every spec document has: apiVersion, kind, metadata, spec."""

    KIND: ClassVar[str] = ""
    FOLDER: ClassVar[str] = ""

    api_version: Literal["llmops/v1"] = Field(alias="apiVersion")
    kind: str
    metadata: Metadata
    spec: Any

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @property
    def name(self) -> str:
        return self.metadata.name
