"""Runner `arena`, outcomes: one battle's vote between two models, in FastChat's terms."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

Winner = Literal["model_a", "model_b", "tie", "tie (bothbad)"]
WINNERS: tuple[str, ...] = ("model_a", "model_b", "tie", "tie (bothbad)")
VoterKind = Literal["judge", "human"]
VOTER_KINDS: tuple[str, ...] = ("judge", "human")
assert WINNERS == get_args(Winner)

_SWAPPED = {
    "model_a": "model_b",
    "model_b": "model_a",
    "tie": "tie",
    "tie (bothbad)": "tie (bothbad)",
}


@dataclass(frozen=True)
class Vote:
    """Who won a battle between `model_a` and `model_b` (ties and "both bad" are distinct)."""

    model_a: str
    model_b: str
    winner: Winner
    voter_kind: VoterKind = "judge"
    voter_id: str = ""
    tstamp: float = 0.0
    position: str = ""
    question_id: str | None = None

    def __post_init__(self) -> None:
        if self.winner not in WINNERS:
            raise ValueError(f"winner {self.winner!r} is not one of {', '.join(WINNERS)}")
        if self.voter_kind not in VOTER_KINDS:
            raise ValueError(f"voter_kind {self.voter_kind!r} is not one of judge, human")

    def reversed(self) -> Vote:
        """The same vote with the two sides swapped (model_b becomes model_a)."""
        return replace(
            self,
            model_a=self.model_b,
            model_b=self.model_a,
            winner=_SWAPPED[self.winner],  # type: ignore[arg-type]
        )
