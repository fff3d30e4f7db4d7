"""Spec API, kind Model: a base model and where its weights come from."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from controller.api.common import Name, PackageFile, RepoPath, Resource, Strict
from runners.pull.urls import DEFAULT_MAX_BYTES, url_problem


class LocalDirSource(Strict):
    """A folder in the repository with config, tokenizer and weights; links stay inside it."""

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
    file: PackageFile


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


def _fetchable_url(value: str) -> str:
    problem = url_problem(value)
    if problem:
        raise ValueError(problem)
    return value


class UrlSource(Strict):
    """An HTTPS URL to a single GGUF file, verified by sha256 and capped in size.

    Plain http is accepted for 127.0.0.1 and localhost only (a local mirror, the tests)."""

    type: Literal["url"]
    url: Annotated[str, AfterValidator(_fetchable_url)] = Field(
        pattern=r"^(https?|s3)://\S+$",
        description="An https URL with no credentials or signatures (user@, X-Amz-Signature=, "
        "sig=, token=): it is copied into plans, llmops.lock and the model card. Download a "
        "private file outside llmops and name it with a gguf source instead.",
    )
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="sha256 of the file (sha256sum); the download is refused when it differs.",
    )
    max_bytes: int = Field(
        default=DEFAULT_MAX_BYTES,
        gt=0,
        description="Largest download accepted, checked on the declared and the received "
        "size across redirects (20 GiB by default).",
    )

    @model_serializer(mode="wrap")
    def _without_default_cap(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`max_bytes`, added later, leaves the source's digest alone at its default."""
        data = handler(self)
        if data.get("max_bytes") == DEFAULT_MAX_BYTES:
            data.pop("max_bytes", None)
        return data


class ExperimentSource(Strict):
    """A model that an Experiment produces (one of its runs)."""

    type: Literal["experiment"]
    experiment: Name
    run: Name = "default"


class QuantizeGate(Strict):
    """When a quantized artifact may serve: measured through llama.cpp against its source."""

    max_perplexity_increase: float = Field(
        default=0.03,
        ge=0,
        description="Largest relative perplexity increase over the source version (0.03: 3%).",
    )
    min_token_agreement: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="Least share of positions where the artifact's greedy next token is the "
        "source's (greedy generations non-inferior within a margin).",
    )
    texts: RepoPath | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="A JSONL file (field text, or prompt + completion) or plain text file "
        "(one text per line) the gate scores; a few built-in English texts when unset.",
    )
    suite: Name | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="An EvalSuite run on the artifact (llama.cpp backend, over the serving "
        "runtime's API) and on its source version, compared sample by sample (paired "
        "bootstrap): each perplexity at most max_perplexity_increase worse, every other "
        "metric non-inferior within non_inferiority_margin. Unset: the texts alone.",
    )
    non_inferiority_margin: float = Field(
        default=0.05,
        ge=0,
        exclude_if=lambda v: v == 0.05,
        description="With suite: how far the worse end of a metric's 95% interval of the "
        "difference (artifact - source) may fall below zero (above, for lower-is-better).",
    )


class QuantizedSource(Strict):
    """A GGUF artifact derived from another registered version with llama.cpp's tooling."""

    type: Literal["quantized"]
    from_: str = Field(
        alias="from",
        pattern=r"^[a-z0-9][a-z0-9-]*(@[A-Za-z0-9._-]+)?$",
        description="The model version quantised: name, name@number or name@alias. An "
        "adapter version is merged into its base in memory first.",
    )
    format: Literal["gguf"] = "gguf"
    quantization: Literal["f16", "q8_0", "q4_k_m"] = Field(
        description="llama.cpp quantisation type of the artifact."
    )
    gate: QuantizeGate = Field(default_factory=QuantizeGate)

    model_config = ConfigDict(extra="forbid", populate_by_name=False, serialize_by_alias=True)


ModelSource = Annotated[
    LocalDirSource
    | GgufFileSource
    | PythonPackageSource
    | HubSource
    | UrlSource
    | ExperimentSource
    | QuantizedSource,
    Field(discriminator="type"),
]


class ModelSpec(Strict):
    source: ModelSource
    description: str = ""
    license: str | None = Field(default=None, description="SPDX id, e.g. apache-2.0.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="dtype the weights are stored in after import. auto: as the source holds "
        "them; a GGUF in what its tensors need (float16 for quantised ones, never float32 "
        "unless the file is F32).",
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
