"""Spec API, derived kind: what one Evaluation (of an Experiment run, or of its control) runs."""

from __future__ import annotations

from pydantic import Field

from controller.api.common import Name, Strict


class EvaluationSpec(Strict):
    """Not written by people: the resolver derives one per run and one for the control."""

    suite: Name
    subject: str = Field(
        description="The Experiment run's address, or 'model:<ref>' for a control model."
    )

    @property
    def control_model(self) -> str | None:
        """The model reference a control evaluation scores; None for a run's evaluation."""
        prefix, _, ref = self.subject.partition(":")
        return ref if prefix == "model" and ref else None
