"""Spec API, kind Pipeline: the production loop from collected data to a promotion PR."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from controller.api.common import Name, Resource, Strict


class Trigger(Strict):
    schedule: str | None = Field(
        default=None,
        pattern=r"^(\S+\s+){4}\S+$",
        description="Cron expression (five fields), e.g. '0 3 * * 1'.",
    )
    min_new_rows: int = Field(default=0, ge=0, description="Run only when this many rows arrived.")

    @model_validator(mode="after")
    def _something(self) -> Trigger:
        if self.schedule is None and self.min_new_rows == 0:
            raise ValueError("a trigger needs a 'schedule', 'min_new_rows', or both")
        return self


class UpdateDatasetStep(Strict):
    step: Literal["update_dataset"]
    dataset: Name


class RetrainStep(Strict):
    step: Literal["retrain"]
    experiment: Name
    run: Name = "default"


class RegressionTestStep(Strict):
    step: Literal["regression_test"]
    suite: Name
    against: Name = Field(description="The Deployment whose serving model is the baseline.")


class ArenaStep(Strict):
    """The candidate must also pass an Arena's gates (run after the regression test, when
    the retrained version is the newest: an Arena reference without @ names it)."""

    step: Literal["arena"]
    arena: Name


class OpenPullRequestStep(Strict):
    step: Literal["open_pull_request"]
    deployment: Name
    branch_prefix: str = Field(
        default="llmops/pipeline/",
        pattern=r"^[A-Za-z0-9._/-]+$",
        description="Branches are <prefix><pipeline>/<fingerprint of the base snapshot>.",
    )
    reviewers: list[str] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)


PipelineStep = Annotated[
    UpdateDatasetStep | RetrainStep | RegressionTestStep | ArenaStep | OpenPullRequestStep,
    Field(discriminator="step"),
]


class PipelineSpec(Strict):
    trigger: Trigger
    steps: list[PipelineStep] = Field(min_length=1)


class Pipeline(Resource):
    """The production loop: new data -> dataset version -> retrain -> regression test -> PR."""

    KIND: ClassVar[str] = "Pipeline"
    FOLDER: ClassVar[str] = "pipelines"
    kind: Literal["Pipeline"]
    spec: PipelineSpec
