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
    """The lexical half of the path rule; resolution (symlinks) is checked where the root is known.

    Refused: empty or padded, absolute ('/', '~', 'C:'), NUL or control characters, backslashes
    (a separator on Windows, an escape elsewhere) and any '..' part, even one that stays inside:
    a path reads the same on every machine and can be checked without touching the disk.
    """
    if not value or value.strip() != value:
        raise ValueError("a path must be non-empty and have no leading or trailing spaces")
    if "\x00" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("a path cannot contain NUL or control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:  # lone surrogates, e.g. from a YAML "\ud800" escape
        raise ValueError("a path must be valid UTF-8 text") from err
    if value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", value):
        raise ValueError(
            "absolute paths are not allowed; write the path relative to the repository root"
        )
    if "\\" in value:
        raise ValueError("a path cannot contain '\\'; separate folders with '/'")
    if ".." in value.split("/"):
        raise ValueError(
            "a path with '..' leaves the repository; write it from the repository root"
        )
    return value


RepoPath = Annotated[
    str,
    AfterValidator(_relative_path),
    Field(
        description="A path relative to the repository root, with no '..'; after symlinks are "
        "resolved it must still be inside the repository."
    ),
]

PackageFile = Annotated[
    str,
    AfterValidator(_relative_path),
    Field(
        pattern=r"^[A-Za-z0-9._/-]+$",
        description="Path of the file inside the package's folder, with no '..'.",
    ),
]


def preset_entry(entry: Any) -> Any:
    """A defaults-list entry names presets by group and option; Hydra joins both onto the
    presets folder, so each must be a plain name path with no '..' (it would load YAML from
    anywhere on the machine)."""
    parts = [entry] if not isinstance(entry, dict) else [*entry.keys(), *entry.values()]
    for part in parts:
        for text in part if isinstance(part, list) else [part]:
            if text is None:
                continue
            if not isinstance(text, str):
                raise ValueError("a defaults entry is 'group/option' or {group: option}")
            bad = any(ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF for c in text)
            if bad or "\\" in text or ".." in text.split("/"):
                raise ValueError(  # repr: the text may hold characters no terminal shows
                    f"preset {text!r} must stay in specs/experiments/_presets/: no '..', "
                    "backslashes or control characters"
                )
    return entry


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
