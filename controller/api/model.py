"""Spec API, kind Model: a base model and where its weights come from."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from controller.api.common import Name, RepoPath, Resource, Strict


class LocalDirSource(Strict):
    """A folder in the repository (or a path it links to) with config, tokenizer and weights."""

    type: Literal["local"]
    path: RepoPath


class GgufFileSource(Strict):
    """A single GGUF file; converted once to safetensors with its tokenizer and chat template."""

    type: Literal["gguf"]
    path: RepoPath


class PythonPackageSource(Strict):
    """A weights file shipped inside an installed Python package, pinned to its version."""

    type: Literal["python-package"]
    package: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = Field(description="The exact package version the weights come from.")
    file: str = Field(
        pattern=r"^[A-Za-z0-9._/-]+$", description="Path of the file inside the package."
    )


class HubSource(Strict):
    """A Hugging Face Hub repository pinned to a commit; read from the local cache offline."""

    type: Literal["hub"]
    repo: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
    revision: str = Field(
        pattern=r"^[0-9a-f]{40}$", description="The 40-hex commit the model is pinned to."
    )
    files: list[str] = Field(
        default_factory=list, description="Only these files (glob patterns); all when empty."
    )


class UrlSource(Strict):
    """An HTTP(S) or S3 URL to a single file (GGUF or safetensors), verified by sha256."""

    type: Literal["url"]
    url: str = Field(pattern=r"^(https?|s3)://\S+$")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class ExperimentSource(Strict):
    """A model that an Experiment produces (one of its runs)."""

    type: Literal["experiment"]
    experiment: Name
    run: Name = "default"


ModelSource = Annotated[
    LocalDirSource
    | GgufFileSource
    | PythonPackageSource
    | HubSource
    | UrlSource
    | ExperimentSource,
    Field(discriminator="type"),
]


class ModelSpec(Strict):
    source: ModelSource
    description: str = ""
    license: str | None = Field(default=None, description="SPDX id, e.g. apache-2.0.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="dtype the weights are stored in after import."
    )
    allow_pickle: bool = Field(
        default=False, description="Allow pickle-based weights (.bin, .pt, .pth, .pkl). Unsafe."
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow code shipped with the model to run. Unsafe."
    )
    aliases: list[Name] = Field(
        default_factory=list, description="Aliases the imported version gets, e.g. champion."
    )


class Model(Resource):
    """A base model and where it comes from, or a model an Experiment produces."""

    KIND: ClassVar[str] = "Model"
    FOLDER: ClassVar[str] = "models"
    kind: Literal["Model"]
    spec: ModelSpec
