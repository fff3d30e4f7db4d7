"""Observation, arena leaderboard wording: which ranks the data supports and what was decided,
shared by the dashboard, the pull-request report, the CLI and the status line (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Outcomes:
    """Counted votes by outcome, and judge verdicts that could not be read (not counted)."""

    decided: int  # one model won
    ties: int
    both_bad: int
    unparseable: int = 0

    @property
    def counted(self) -> int:
        return self.decided + self.ties + self.both_bad

    def line(self) -> str:
        """'12 counted vote(s): 7 decided, 4 tie(s), 1 both bad; 2 unparseable verdict(s)
        not counted'."""
        text = (
            f"{self.counted} counted vote(s): {self.decided} decided, {self.ties} tie(s), "
            f"{self.both_bad} both bad"
        )
        if self.unparseable:
            text += f"; {self.unparseable} unparseable verdict(s) not counted"
        return text


def outcomes_of(standings: Sequence[Any], unparseable: int = 0) -> Outcomes:
    """Outcome totals from a leaderboard's standings (runners.arena.ratings.Standing): each
    decided vote is one model's win; each tie is counted on both sides."""
    return Outcomes(
        decided=sum(s.wins for s in standings),
        ties=sum(s.ties for s in standings) // 2,
        both_bad=sum(s.both_bad for s in standings) // 2,
        unparseable=unparseable,
    )


def shown_ranks(ranks: Sequence[int], decided: int | None) -> list[str]:
    """The rank to print per standing, or '' where the data does not support one: no rank
    at all when no vote was decided (every rating is the starting 1000 by construction) or
    when the intervals separate no model from another (every rank the same); otherwise the
    ranks as Chatbot Arena gives them (models whose intervals overlap share one)."""
    if decided == 0 or len(ranks) < 2 or len(set(ranks)) == 1:
        return ["" for _ in ranks]
    return [str(rank) for rank in ranks]


def no_decision_note(outcomes: Outcomes) -> str | None:
    """The sentence a leaderboard needs when no vote picked a winner, else None."""
    if outcomes.decided:
        return None
    if not outcomes.counted:
        why = (
            f"all {outcomes.unparseable} judge verdict(s) were unparseable"
            if outcomes.unparseable
            else "there are no counted votes"
        )
    else:
        why = f"all {outcomes.counted} counted vote(s) were ties or both bad" + (
            f" and {outcomes.unparseable} verdict(s) were unparseable"
            if outcomes.unparseable
            else ""
        )
    return (
        f"No battle was decided: {why}. The equal ratings mean nothing separated the "
        "models, not that they are equally good; no model is ranked."
    )


def separation_note(ranks: Sequence[int], decided: int | None) -> str | None:
    """The sentence a leaderboard needs when votes were decided but the intervals overlap
    for every pair, else None."""
    if decided and len(ranks) > 1 and len(set(ranks)) == 1:
        return (
            "The rating intervals overlap for every pair of models: the data does not "
            "separate them, so no model is ranked."
        )
    return None
