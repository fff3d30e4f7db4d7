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


def judge_lines(quality: Any) -> list[str]:
    """How far the arena's judge can be trusted, in sentences (controller.state.lockfile
    JudgeQuality): its position bias, its agreement with people, whether its votes count."""
    if quality is None:
        return []
    if quality.position_bias is None:
        bias = "position bias unmeasured (no battle has a verdict in both orders)"
    else:
        bias = (
            f"position bias {quality.position_bias:.0%} (verdict flips with the answer order "
            f"in {round(quality.position_bias * quality.both_orders)} of "
            f"{quality.both_orders} battle(s))"
        )
    lines = [f"Judge {quality.judge}: {bias}."]
    level = f"{quality.confidence:.0%}"
    if not quality.shared:
        lines.append("Agreement with people: no battle has both a judge and a human vote yet.")
    else:
        agreement = f"{quality.agreement:.0%}"
        if quality.agreement_interval is not None:
            low, high = quality.agreement_interval
            agreement += f" [{low:.0%}, {high:.0%}]"
        if quality.kappa is None:
            kappa = "undefined (one outcome throughout)"
        else:
            kappa = f"{quality.kappa:.2f}"
            if quality.kappa_interval is not None:
                low, high = quality.kappa_interval
                kappa += f" [{low:.2f}, {high:.2f}]"
        lines.append(
            f"Agreement with people on {quality.shared} shared vote(s): {agreement}, "
            f"Cohen's kappa {kappa} ({level} bootstrap intervals)."
        )
    if quality.detail:
        lines.append(quality.detail[:1].upper() + quality.detail[1:] + ".")
    return lines


def endpoint_lines(endpoints: dict[str, Any]) -> list[str]:
    """Each endpoint contestant in a sentence (controller.state.lockfile EndpointUsage, or
    its JSON form): what it is, and the latency and token usage of its answers."""
    lines = []
    for label, usage in sorted(endpoints.items()):
        u = usage if isinstance(usage, dict) else usage.model_dump()
        parts = [f"{u.get('answers') or 0} answer(s)"]
        if u.get("latency_s") is not None:
            latency = f"latency {u['latency_s']:.3g} s mean"
            if u.get("latency_p95_s") is not None:
                latency += f", {u['latency_p95_s']:.3g} s p95"
            parts.append(latency)
        if u.get("prompt_tokens") is None and u.get("completion_tokens") is None:
            parts.append("token usage not reported")
        else:
            parts.append(
                f"{u.get('prompt_tokens') or 0} prompt + {u.get('completion_tokens') or 0} "
                "completion tokens"
            )
        requests = u.get("requests") or 0
        parts.append(
            f"{requests} request(s) in the last run, {u.get('retries') or 0} retried"
            if requests
            else "no request in the last run (answers stored)"
        )
        where = f"model {u.get('model')} at {u.get('endpoint')}"
        lines.append(f"Endpoint {label}: {where}: " + "; ".join(parts) + ".")
    return lines
