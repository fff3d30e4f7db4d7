"""Spec API, kind Arena: pairwise battles between models, a judge, votes and rating gates."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from controller.api.common import NAME_PATTERN, Ref, RepoPath, Resource, Strict
from controller.api.deployment import KEY_ENV_PATTERN, KEY_ENV_PREFIX


class FilePrompts(Strict):
    """Prompts from a local JSONL file, one row each."""

    type: Literal["file"]
    path: RepoPath
    field: str = Field(default="question", description="Row field holding the prompt.")
    id_field: str = Field(default="id", description="Row field naming the prompt, if present.")
    limit: int | None = Field(default=None, ge=1, description="Only the first N rows.")
    reference: str | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="Row field holding a reference answer: the judge sees it "
        "(reference-guided judging); a metric judge scores against it.",
    )
    keywords: str | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="Row field listing the words an answer must contain (keyword_recall).",
    )


class DatasetPrompts(Strict):
    """Prompts from a split of a prepared Dataset (its prompt, question or user message)."""

    type: Literal["dataset"]
    dataset: Ref
    split: Literal["train", "validation", "test"] = "test"
    field: str | None = Field(
        default=None, description="Row field holding the prompt; by format when unset."
    )
    limit: int | None = Field(default=None, ge=1, description="Only the first N rows.")
    reference: str | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="Row field holding a reference answer (e.g. 'response'): the judge sees "
        "it (reference-guided judging); a metric judge scores against it.",
    )
    keywords: str | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="Row field listing the words an answer must contain (keyword_recall).",
    )


PromptSet = Annotated[FilePrompts | DatasetPrompts, Field(discriminator="type")]


class ArenaGeneration(Strict):
    max_new_tokens: int = Field(default=64, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0)
    seed: int = 0
    stop: list[str] = Field(default_factory=list)


class RequireAgreement(Strict):
    """Judge votes count only while the judge agrees with people well enough, measured on
    the battles both voted on (the point estimates; intervals are reported beside them)."""

    min_kappa: float | None = Field(
        default=None, ge=-1.0, le=1.0, description="Lowest Cohen's kappa with human votes."
    )
    min_percent: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Lowest share of human votes the judge matches."
    )
    min_shared: int = Field(
        default=10,
        ge=1,
        description="Fewest (judge, human) vote pairs to measure on; fewer: judge votes do "
        "not count.",
    )

    @model_validator(mode="after")
    def _a_minimum(self) -> RequireAgreement:
        if self.min_kappa is None and self.min_percent is None:
            raise ValueError("give 'min_kappa', 'min_percent' or both")
        return self


class ArenaJudge(Strict):
    """A registered model that compares two answers; both orders are judged. When the prompt
    set has reference answers (`prompts.reference`), the judge is shown the reference."""

    # Unset fields that arenas written before them never had stay out of the dump, so those
    # arenas keep their digests (and plan no-op).
    type: Literal["model"] = Field(default="model", exclude_if=lambda value: value == "model")
    model: Ref
    rubric: str = Field(min_length=1)
    max_new_tokens: int = Field(default=48, ge=1, le=1024)
    mode: Literal["generate", "likelihood"] = Field(
        default="generate",
        description="generate: parse the verdict from the judge's reply; likelihood: take "
        "the verdict ([[A]], [[B]], [[C]], [[D]]) the judge finds most likely, for judges "
        "too small to follow the format.",
    )
    require_agreement: RequireAgreement | None = Field(
        default=None, exclude_if=lambda value: value is None
    )


class MetricJudge(Strict):
    """A deterministic judge without a model: each answer scored against the prompt's
    reference; the higher score wins when the two differ by more than `tie_band`, both 0 is
    'both bad'. Both orders are judged (a metric has no position bias)."""

    type: Literal["metric"]
    metric: Literal["rouge_l", "token_f1", "keyword_recall"]
    tie_band: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description="Score differences up to this are ties (scores are 0..1).",
    )
    require_agreement: RequireAgreement | None = Field(
        default=None, exclude_if=lambda value: value is None
    )


class EndpointKey(Strict):
    """An endpoint's key: the name of a LLMOPS_KEY_* variable (the key itself is never
    written into a spec, a record or a log)."""

    env: str = Field(
        json_schema_extra={"pattern": KEY_ENV_PATTERN},
        description=f"Environment variable holding the key; it must start with {KEY_ENV_PREFIX}.",
    )

    @field_validator("env")
    @classmethod
    def _key_variable(cls, value: str) -> str:
        if not re.fullmatch(KEY_ENV_PATTERN, value):
            raise ValueError(
                f"api_key names {value}, which is not a key variable: only {KEY_ENV_PREFIX}"
                "<NAME> variables (uppercase) may be named, so a spec cannot send any other "
                "variable of the apply environment (a CI token, a cloud key) to an endpoint"
            )
        return value


BASE_URL_PATTERN = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"


class EndpointTarget(Strict):
    """An OpenAI-compatible chat endpoint a contestant answers from
    (`<base_url>/chat/completions`), with its key variable and request limits."""

    base_url: str = Field(
        json_schema_extra={"pattern": BASE_URL_PATTERN},
        description="The API root, e.g. https://api.example.com/v1 or http://127.0.0.1:8000/v1.",
    )
    model: str = Field(min_length=1, description="The model name the endpoint serves.")
    api_key: EndpointKey | None = Field(default=None, exclude_if=lambda value: value is None)
    concurrency: int = Field(default=4, ge=1, le=64, description="Requests in flight.")
    retries: int = Field(default=4, ge=0, le=10, description="Retries on 429 and 5xx replies.")
    timeout_s: float = Field(default=60.0, gt=0, le=600)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.fullmatch(BASE_URL_PATTERN, value):
            raise ValueError(
                f"base_url {value!r} is not an http(s) URL; give the API root, e.g. "
                "https://api.example.com/v1 or http://127.0.0.1:8000/v1"
            )
        return value.rstrip("/")


class EndpointContestant(Strict):
    """A contestant that is not in the registry: any OpenAI-compatible chat endpoint."""

    endpoint: EndpointTarget
    name: str = Field(
        pattern=NAME_PATTERN,
        description="Its label on the leaderboard and in gates (lowercase, digits, '-').",
    )


class DeploymentContestant(Strict):
    """A Deployment of this repository as a contestant, asked over its API at the endpoint
    and with the key variable its last apply recorded (as `llmops eval served --deployment`)."""

    deployment: str = Field(pattern=NAME_PATTERN, description="The Deployment's name.")
    name: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        exclude_if=lambda value: value is None,
        description="Its label on the leaderboard and in gates; the deployment's name if unset.",
    )
    concurrency: int = Field(default=4, ge=1, le=64, description="Requests in flight.")
    retries: int = Field(default=4, ge=0, le=10, description="Retries on 429 and 5xx replies.")
    timeout_s: float = Field(default=60.0, gt=0, le=600)


def _contestant_type(value: Any) -> str:
    if isinstance(value, dict):
        return "deployment" if "deployment" in value and "endpoint" not in value else "endpoint"
    if isinstance(value, EndpointContestant | DeploymentContestant):
        return "endpoint" if isinstance(value, EndpointContestant) else "deployment"
    return "ref"


Contestant = Annotated[
    Annotated[Ref, Tag("ref")]
    | Annotated[EndpointContestant, Tag("endpoint")]
    | Annotated[DeploymentContestant, Tag("deployment")],
    Discriminator(_contestant_type),
]


def contestant_name(entry: Contestant) -> str:
    """How the spec's gates name a contestant: a registry reference as written, an
    endpoint's `name`, a deployment's `name` or else its deployment's name."""
    if isinstance(entry, EndpointContestant):
        return entry.name
    if isinstance(entry, DeploymentContestant):
        return entry.name or entry.deployment
    return entry


class EndpointJudge(Strict):
    """An OpenAI-compatible chat endpoint as the judge (`<base_url>/chat/completions`):
    the same pairwise prompt as a model judge, greedy, both orders; 429 and 5xx replies are
    retried with backoff; verdicts are stored per battle, so a rerun asks nothing again."""

    type: Literal["endpoint"]
    base_url: str = Field(
        pattern=BASE_URL_PATTERN,
        description="The API root, e.g. https://api.example.com/v1 or http://127.0.0.1:8000/v1.",
    )
    model: str = Field(min_length=1, description="The model name the endpoint serves.")
    api_key: EndpointKey | None = None
    rubric: str = Field(min_length=1)
    max_new_tokens: int = Field(default=48, ge=1, le=1024)
    retries: int = Field(default=4, ge=0, le=10, description="Retries on 429 and 5xx replies.")
    timeout_s: float = Field(default=60.0, gt=0, le=600)
    require_agreement: RequireAgreement | None = Field(
        default=None, exclude_if=lambda value: value is None
    )


def _judge_type(value: Any) -> str:
    kind = value.get("type", "model") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in ("model", "metric", "endpoint") else "model"


Judge = Annotated[
    Annotated[ArenaJudge, Tag("model")]
    | Annotated[MetricJudge, Tag("metric")]
    | Annotated[EndpointJudge, Tag("endpoint")],
    Discriminator(_judge_type),
]


class Bootstrap(Strict):
    rounds: int = Field(default=1000, ge=10, le=100_000)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    seed: int = 0


class NotWorseThan(Strict):
    """Pass when the lower bound of rating(candidate) - rating(baseline) is above `margin`."""

    candidate: Ref
    baseline: Ref
    margin: float = Field(
        default=-50.0, description="Rating points; -50 allows a small, uncertain loss."
    )
    voters: Literal["judge", "human", "all"] = "all"


class ArenaSpec(Strict):
    description: str = ""
    models: list[Contestant] = Field(
        min_length=2,
        description="Registry references (aliases follow their target version), "
        "`{endpoint: {base_url, model, api_key}, name}` or `{deployment: NAME}`.",
    )
    prompts: PromptSet
    battles_per_pair: int = Field(
        default=20, ge=1, description="Prompts each pair of models battles on (at most all)."
    )
    generation: ArenaGeneration = Field(default_factory=ArenaGeneration)
    judge: Judge | None = None
    human_votes: bool = Field(default=False, description="People vote too (llmops arena vote).")
    bootstrap: Bootstrap = Field(default_factory=Bootstrap)
    gates: list[NotWorseThan] = Field(default_factory=list)

    @model_validator(mode="after")
    def _voters_and_models(self) -> ArenaSpec:
        names = self.contestant_names()
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"'models' names {', '.join(twice)} twice; give each a new 'name'")
        if self.judge is None and not self.human_votes:
            raise ValueError("an arena needs a 'judge', 'human_votes: true', or both")
        if isinstance(self.judge, MetricJudge):
            needs = "keywords" if self.judge.metric == "keyword_recall" else "reference"
            if getattr(self.prompts, needs) is None:
                raise ValueError(
                    f"judge metric {self.judge.metric} scores against each prompt's "
                    f"{'keywords' if needs == 'keywords' else 'reference answer'}: set "
                    f"'prompts.{needs}' to the row field holding "
                    f"{'them' if needs == 'keywords' else 'it'}"
                )
        if self.judge is not None and self.judge.require_agreement and not self.human_votes:
            raise ValueError(
                "'judge.require_agreement' measures the judge against people's votes: it "
                "needs 'human_votes: true'"
            )
        for gate in self.gates:
            missing = [r for r in (gate.candidate, gate.baseline) if r not in names]
            if missing:
                raise ValueError(f"gate names {', '.join(missing)}, which is not in 'models'")
        return self

    def contestant_names(self) -> list[str]:
        return [contestant_name(entry) for entry in self.models]

    def registry_refs(self) -> list[str]:
        """The contestants that are registry references."""
        return [entry for entry in self.models if isinstance(entry, str)]


class Arena(Resource):
    """Which model do people (or a judge) prefer, and how sure are we."""

    KIND: ClassVar[str] = "Arena"
    FOLDER: ClassVar[str] = "arenas"
    kind: Literal["Arena"]
    spec: ArenaSpec
