"""Spec API, derived kind: what one Evaluation (of an Experiment run, or of its control) runs."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from controller.api.common import Name, Strict
from controller.api.experiment import Executor


class EvaluationSpec(Strict):
    """Not written by people: the resolver derives one per run and one for the control."""

    suite: Name
    subject: str = Field(
        description="The Experiment run's address, 'model:<ref>' for a control model, or "
        "'endpoint:<name>' for an endpoint the suite names."
    )
    # An endpoint the suite names (its entry in the suite's `endpoints`, as written): part of
    # the digest, so a change of its settings evaluates it again. Absent for model subjects.
    endpoint: dict[str, Any] | None = Field(default=None, exclude_if=lambda value: value is None)
    # Where a model subject is evaluated: the experiment's training.executor when that is a
    # Kubernetes Job (the suite then runs in a Job too); absent: in the apply's process.
    executor: Executor | None = Field(default=None, exclude_if=lambda value: value is None)

    @property
    def endpoint_name(self) -> str | None:
        """The name of the endpoint an endpoint evaluation asks; None for a model's."""
        prefix, _, name = self.subject.partition(":")
        return name if prefix == "endpoint" and name else None

    @property
    def control_model(self) -> str | None:
        """The model reference a control evaluation scores; None for a run's evaluation."""
        prefix, _, ref = self.subject.partition(":")
        return ref if prefix == "model" and ref else None
