"""Spec API, kind Dataset: sources, canonical format, preparation steps and splits."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from controller.api.arena import DeploymentContestant, EndpointTarget
from controller.api.common import Name, Ref, RepoPath, Resource, Strict

Format = Literal["text", "instruction", "chat", "preference", "unpaired", "qa"]

CANONICAL_FIELDS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "instruction": ("prompt", "response"),
    "chat": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),  # label: true desirable, false undesirable
    "qa": ("question", "answers"),
}


class FileSource(Strict):
    """Local rows: JSONL, CSV, Parquet, plain text (a row per line) or a datasets save_to_disk."""

    type: Literal["file"]
    path: RepoPath
    format: Literal["auto", "jsonl", "csv", "parquet", "text", "disk"] = "auto"
    mapping: dict[str, str] = Field(
        default_factory=dict,
        description="Canonical field -> source column, e.g. {prompt: question, response: answer}.",
    )
    weight: float = Field(default=1.0, gt=0, description="Share of this source in a mixture.")


class DatasetSource(Strict):
    """Rows of another Dataset spec (its prepared train split), mixed in by weight."""

    type: Literal["dataset"]
    dataset: Ref
    weight: float = Field(default=1.0, gt=0)


class CollectedSource(Strict):
    """Requests, responses and feedback a Deployment collected into a named store."""

    type: Literal["collected"]
    store: Name = Field(description="The store a Deployment writes to (its collect.into).")
    mapping: dict[str, str] = Field(default_factory=dict)
    weight: float = Field(default=1.0, gt=0)
    only_positive_feedback: bool = Field(
        default=False,
        description="Rated-up or corrected rows only (text, instruction, chat formats); a "
        "preference or unpaired Dataset takes every rating and correction as its feedback.",
    )


class ArenaSource(Strict):
    """An Arena's decisive votes as pairs: the winner's answer chosen over the loser's (ties
    and both-bad votes left out). Preference or unpaired Datasets only."""

    type: Literal["arena"]
    arena: Name = Field(description="The Arena spec whose stored votes become pairs.")
    weight: float = Field(default=1.0, gt=0)


Source = Annotated[
    FileSource | DatasetSource | CollectedSource | ArenaSource, Field(discriminator="type")
]


class NormalizeStep(Strict):
    step: Literal["normalize"]
    unicode: Literal["NFC", "NFKC", "none"] = "NFC"
    whitespace: bool = True


class FilterStep(Strict):
    step: Literal["filter"]
    min_tokens: int | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)
    drop_empty: bool = True
    exclude_regex: list[str] = Field(default_factory=list)
    tokenizer: Ref | None = Field(
        default=None, description="Model whose tokenizer counts tokens; the base model by default."
    )


class DedupStep(Strict):
    step: Literal["dedup"]


class NearDedupStep(Strict):
    step: Literal["near_dedup"]
    threshold: float = Field(default=0.8, gt=0, le=1, description="Jaccard similarity.")
    num_perm: int = Field(default=128, ge=16, le=1024)
    shingle_size: int = Field(default=3, ge=1, le=16, description="Words per shingle.")


class RedactPiiStep(Strict):
    step: Literal["redact_pii"]
    kinds: list[Literal["email", "phone", "ip", "api_key"]] = Field(
        default_factory=lambda: ["email", "phone", "ip", "api_key"]
    )
    allow: list[str] = Field(
        default_factory=list,
        description="Regexes of values to keep, e.g. your own support address '@example\\.com$'.",
    )


class DecontaminateStep(Strict):
    step: Literal["decontaminate"]
    ngram: int = Field(default=13, ge=3, le=50, description="Words per n-gram (13 is common).")
    suites: list[Name] = Field(
        default_factory=list, description="EvalSuites to check against; every suite when empty."
    )


class AugmentStep(Strict):
    step: Literal["augment"]
    method: Literal["template", "paraphrase", "self_instruct"]
    model: Ref | None = Field(default=None, description="Registered model that writes new rows.")
    # Left out of the dump when unset, so Datasets written before teacher endpoints keep
    # their digests.
    endpoint: EndpointTarget | DeploymentContestant | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="A teacher endpoint that writes new rows instead of 'model': "
        "`{base_url, model, api_key: {env: LLMOPS_KEY_...}}` or `{deployment: NAME}`; replies "
        "are cached by request, so preparing again asks nothing.",
    )
    templates: list[str] = Field(default_factory=list)
    count: int = Field(
        default=0, ge=0, description="New rows to generate (paraphrase/self-instruct)."
    )
    novelty_threshold: float = Field(
        default=0.7, gt=0, le=1, description="Drop a new row whose ROUGE-L to any row exceeds this."
    )
    seed: int = 0

    @model_validator(mode="after")
    def _needs(self) -> AugmentStep:
        if self.method == "template" and not self.templates:
            raise ValueError("method 'template' needs at least one entry in 'templates'")
        if self.model is not None and self.endpoint is not None:
            raise ValueError("give 'model' (a registered model) or 'endpoint', not both")
        if self.method in ("paraphrase", "self_instruct") and (
            self.model is None and self.endpoint is None
        ):
            raise ValueError(
                f"method '{self.method}' needs 'model', a registered model, or 'endpoint', an "
                "OpenAI-compatible teacher endpoint"
            )
        if self.method == "template" and self.endpoint is not None:
            raise ValueError("method 'template' writes no text with a model: leave out 'endpoint'")
        return self


Step = Annotated[
    NormalizeStep
    | FilterStep
    | DedupStep
    | NearDedupStep
    | RedactPiiStep
    | DecontaminateStep
    | AugmentStep,
    Field(discriminator="step"),
]


class Splits(Strict):
    train: float = Field(default=0.9, ge=0, le=1)
    validation: float = Field(default=0.05, ge=0, le=1)
    test: float = Field(default=0.05, ge=0, le=1)
    salt: str = Field(default="", description="Changes every row's split when changed.")

    @model_validator(mode="after")
    def _sum_to_one(self) -> Splits:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must be 1.0, got {total:g}")
        return self


class DatasetSpec(Strict):
    format: Format
    sources: list[Source] = Field(min_length=1)
    steps: list[Step] = Field(default_factory=list)
    splits: Splits = Field(default_factory=Splits)
    on_bad_rows: Literal["fail", "skip"] = Field(
        default="fail", description="Fail the run on a bad row, or skip and count it."
    )
    tokenizer: Ref | None = Field(
        default=None, description="Model whose tokenizer measures lengths and statistics."
    )
    remote: str | None = Field(default=None, description="DVC remote name; the local one if unset.")

    @model_validator(mode="after")
    def _arena_pairs(self) -> DatasetSpec:
        if self.format not in ("preference", "unpaired"):
            for source in self.sources:
                if isinstance(source, ArenaSource):
                    raise ValueError(
                        f"source 'arena: {source.arena}' gives preference pairs; set "
                        "'format: preference' (or 'unpaired'), or use a file source"
                    )
        return self


class Dataset(Resource):
    """Training or evaluation data: sources, format, steps, splits."""

    KIND: ClassVar[str] = "Dataset"
    FOLDER: ClassVar[str] = "datasets"
    kind: Literal["Dataset"]
    spec: DatasetSpec
