"""Runner `arena`, judge quality: position bias (both orders) and agreement with human votes.

Position bias is the share of battles judged in both orders whose two verdicts name different
outcomes once the order is undone (MT-Bench's "inconsistency"): a judge that always picks
the first answer scores 1.0, one that judges content only scores 0.0. Agreement pairs the
judge's vote on a battle with each human vote on the same battle, over three outcomes
(model_a, model_b, tie; "both bad" counts as a tie), as MT-Bench's human-agreement tables do:
percent agreement and Cohen's kappa, with percentile intervals from a bootstrap that resamples
battles (a battle's pairs stay together).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

# The judge's verdicts per order, as runners.arena.judge writes them: "A", "B", "tie",
# "both_bad" (None: unparseable).
_FIRST = {"A": "model_a", "B": "model_b", "tie": "tie", "both_bad": "tie"}
_SECOND = {"A": "model_b", "B": "model_a", "tie": "tie", "both_bad": "tie"}


def outcome_class(winner: str) -> str:
    """model_a, model_b or tie ("tie (bothbad)" is a tie)."""
    return "tie" if winner.startswith("tie") else winner


def position_bias(orders: Sequence[tuple[str | None, str | None]]) -> tuple[float | None, int]:
    """(share of battles whose verdict changes when the order flips, battles compared).

    `orders` holds per battle the verdict with model_a shown first and the one with model_b
    shown first; a battle with an unparseable verdict is left out. None when none is left.
    """
    compared = [
        (_FIRST[one], _SECOND[two]) for one, two in orders if one is not None and two is not None
    ]
    if not compared:
        return None, 0
    flips = sum(1 for one, two in compared if one != two)
    return flips / len(compared), len(compared)


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Cohen's kappa of (judge, human) outcome pairs: (p_o - p_e) / (1 - p_e), with p_e from
    each rater's own outcome shares. None when undefined (no pairs, or p_e = 1: both raters
    gave one and the same outcome throughout)."""
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(1 for j, h in pairs if j == h) / n
    judge, human = Counter(j for j, _ in pairs), Counter(h for _, h in pairs)
    expected = sum(judge[k] * human[k] for k in judge) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def percent_agreement(pairs: Sequence[tuple[str, str]]) -> float | None:
    return sum(1 for j, h in pairs if j == h) / len(pairs) if pairs else None


@dataclass(frozen=True)
class Agreement:
    """Judge against people on the battles both voted on."""

    pairs: int  # (judge vote, human vote) pairs
    battles: int  # battles they come from
    percent: float | None
    percent_interval: tuple[float, float] | None
    kappa: float | None
    kappa_interval: tuple[float, float] | None
    confidence: float


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def agreement(
    battles: Sequence[Sequence[tuple[str, str]]],
    rounds: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Agreement:
    """Percent agreement and Cohen's kappa over every battle's (judge, human) winner pairs,
    with bootstrap percentile intervals (battles resampled with replacement, `rounds` times,
    seeded). Winners are FastChat's; both-bad counts as a tie."""
    groups = [[(outcome_class(j), outcome_class(h)) for j, h in b] for b in battles if b]
    flat = [p for g in groups for p in g]
    percent, kappa = percent_agreement(flat), cohen_kappa(flat)
    percent_interval = kappa_interval = None
    if len(groups) >= 2:
        rng = random.Random(seed)
        percents: list[float] = []
        kappas: list[float] = []
        for _ in range(rounds):
            sample = [p for _ in groups for p in groups[rng.randrange(len(groups))]]
            percents.append(sum(1 for j, h in sample if j == h) / len(sample))
            k = cohen_kappa(sample)
            if k is not None:
                kappas.append(k)
        tail = (1.0 - confidence) / 2
        percent_interval = (_percentile(percents, tail), _percentile(percents, 1 - tail))
        if kappa is not None and len(kappas) >= rounds // 2:
            kappa_interval = (_percentile(kappas, tail), _percentile(kappas, 1 - tail))
    return Agreement(
        pairs=len(flat),
        battles=len(groups),
        percent=percent,
        percent_interval=percent_interval,
        kappa=kappa,
        kappa_interval=kappa_interval,
        confidence=confidence,
    )
