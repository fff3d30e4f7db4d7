"""Spec API, kind Arena: pairwise battles between models, a judge, votes and rating gates."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from controller.api.common import Ref, RepoPath, Resource, Strict


class FilePrompts(Strict):
    """Prompts from a local JSONL file, one row each."""

    type: Literal["file"]
    path: RepoPath
    field: str = Field(default="question", description="Row field holding the prompt.")
    id_field: str = Field(default="id", description="Row field naming the prompt, if present.")
    limit: int | None = Field(default=None, ge=1, description="Only the first N rows.")


class DatasetPrompts(Strict):
    """Prompts from a split of a prepared Dataset (its prompt, question or user message)."""

    type: Literal["dataset"]
    dataset: Ref
    split: Literal["train", "validation", "test"] = "test"
    field: str | None = Field(
        default=None, description="Row field holding the prompt; by format when unset."
    )
    limit: int | None = Field(default=None, ge=1, description="Only the first N rows.")


PromptSet = Annotated[FilePrompts | DatasetPrompts, Field(discriminator="type")]


class ArenaGeneration(Strict):
    max_new_tokens: int = Field(default=64, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0)
    seed: int = 0
    stop: list[str] = Field(default_factory=list)


class ArenaJudge(Strict):
    """A registered model that compares two answers; both orders are judged."""

    model: Ref
    rubric: str = Field(min_length=1)
    max_new_tokens: int = Field(default=48, ge=1, le=1024)
    mode: Literal["generate", "likelihood"] = Field(
        default="generate",
        description="generate: parse the verdict from the judge's reply; likelihood: take "
        "the verdict ([[A]], [[B]], [[C]], [[D]]) the judge finds most likely, for judges "
        "too small to follow the format.",
    )


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
    models: list[Ref] = Field(
        min_length=2, description="Registry references; aliases follow their target version."
    )
    prompts: PromptSet
    battles_per_pair: int = Field(
        default=20, ge=1, description="Prompts each pair of models battles on (at most all)."
    )
    generation: ArenaGeneration = Field(default_factory=ArenaGeneration)
    judge: ArenaJudge | None = None
    human_votes: bool = Field(default=False, description="People vote too (llmops arena vote).")
    bootstrap: Bootstrap = Field(default_factory=Bootstrap)
    gates: list[NotWorseThan] = Field(default_factory=list)

    @model_validator(mode="after")
    def _voters_and_models(self) -> ArenaSpec:
        if len(set(self.models)) != len(self.models):
            raise ValueError("'models' lists the same reference twice")
        if self.judge is None and not self.human_votes:
            raise ValueError("an arena needs a 'judge', 'human_votes: true', or both")
        for gate in self.gates:
            missing = [r for r in (gate.candidate, gate.baseline) if r not in self.models]
            if missing:
                raise ValueError(f"gate names {', '.join(missing)}, which is not in 'models'")
        return self


class Arena(Resource):
    """Which model do people (or a judge) prefer, and how sure are we."""

    KIND: ClassVar[str] = "Arena"
    FOLDER: ClassVar[str] = "arenas"
    kind: Literal["Arena"]
    spec: ArenaSpec
