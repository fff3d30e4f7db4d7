"""Runner `arena`, ratings: Bradley-Terry fit, bootstrap intervals, ranks and a leaderboard.

FastChat's convention (Chatbot Arena): ratings on the Elo scale, 400 points per factor of 10
in the odds of winning, mean rating 1000; a tie and a "both bad" each count as half a win
for each side in the fit, while staying distinct outcomes in the counts. Battles are first
aggregated into one row per (pair, outcome) with a count (one pass over the votes), so a fit
costs the same for 10,000 or 10,000,000 battles among the same models; the bootstrap
resamples battles by drawing multinomial counts over those rows, and fits a chunk of rounds
in one L-BFGS run. The fit is scipy's L-BFGS on the weighted
log-likelihood with a small L2 penalty (`ALPHA`), which keeps an undefeated model's rating
finite (and flagged) and pins the mean.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.special import expit

from runners.arena.outcomes import WINNERS, Vote
from runners.errors import InvalidInput

SCALE = 400.0  # rating points per factor of BASE in the odds
BASE = 10.0
INIT = 1000.0  # mean rating
# L2 penalty on the natural-log strengths, in battles: weak enough to vanish next to a few
# dozen battles, strong enough that a model that won everything still gets a finite rating.
ALPHA = 0.01
CHUNK = 100  # bootstrap rounds fitted together in one L-BFGS run
_POINTS = SCALE / math.log(BASE)
_OUTCOME = {winner: index for index, winner in enumerate(WINNERS)}  # 0 a, 1 b, 2 tie, 3 bad


@dataclass
class BattleTable:
    """Battles aggregated: `counts[p, o]` battles of pair p = (first[p], second[p]) with
    outcome o (0 first won, 1 second won, 2 tie, 3 both bad); first < second, by name."""

    models: list[str]
    first: np.ndarray
    second: np.ndarray
    counts: np.ndarray  # shape (pairs, 4), float

    @property
    def battles(self) -> int:
        return int(self.counts.sum())


def battle_table(votes: Sequence[Vote]) -> BattleTable:
    """Aggregate votes; the order of votes and of a/b inside a vote does not matter."""
    tally: Counter[tuple[str, str, int]] = Counter()
    for vote in votes:
        if vote.model_a == vote.model_b:
            raise InvalidInput(
                f"a battle of model {vote.model_a!r} against itself carries no information; "
                "remove it (model_a and model_b must differ)"
            )
        if vote.model_a < vote.model_b:
            tally[(vote.model_a, vote.model_b, _OUTCOME[vote.winner])] += 1
        else:
            outcome = _OUTCOME[vote.reversed().winner]
            tally[(vote.model_b, vote.model_a, outcome)] += 1
    models = sorted({name for a, b, _ in tally for name in (a, b)})
    index = {name: i for i, name in enumerate(models)}
    pairs = sorted({(index[a], index[b]) for a, b, _ in tally})
    row = {pair: p for p, pair in enumerate(pairs)}
    counts = np.zeros((len(pairs), 4))
    for (a, b, outcome), count in tally.items():
        counts[row[(index[a], index[b])], outcome] = count
    first = np.array([i for i, _ in pairs], dtype=np.intp)
    second = np.array([j for _, j in pairs], dtype=np.intp)
    return BattleTable(models, first, second, counts)


def _scores(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points for the first and second model of each pair: a win is 1, a tie or both-bad 0.5."""
    half = 0.5 * (counts[..., 2] + counts[..., 3])
    return counts[..., 0] + half, counts[..., 1] + half


def _fit(
    table: BattleTable,
    counts: np.ndarray,
    start: np.ndarray | None = None,
    alpha: float = ALPHA,
) -> np.ndarray:
    """Natural-log strengths maximising the penalised weighted Bradley-Terry likelihood.

    `counts` is (pairs, 4) for one fit, or (rounds, pairs, 4) for independent fits solved
    together: the objective is a sum of per-round objectives with no shared parameters, so
    one L-BFGS run over all rounds' strengths finds each round's optimum, without paying
    scipy's per-call overhead once per round.
    """
    n = len(table.models)
    batch = counts.reshape(-1, *table.counts.shape)
    rounds = batch.shape[0]
    won, lost = _scores(batch)  # (rounds, pairs)
    played = won + lost
    # Each round's objective is divided by its battles, so tolerances mean the same at any size.
    scale = 1.0 / np.maximum(played.sum(axis=1, keepdims=True), 1.0)
    won, lost, played = won * scale, lost * scale, played * scale
    ridge = alpha * scale  # (rounds, 1)
    pairs = len(table.first)
    rows = np.arange(pairs)
    incidence = csr_matrix(
        (
            np.r_[np.ones(pairs), -np.ones(pairs)],
            (np.r_[rows, rows], np.r_[table.first, table.second]),
        ),
        shape=(pairs, n),
    )  # gap = incidence @ strength

    def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
        strength = flat.reshape(rounds, n)
        gap = (incidence @ strength.T).T
        loss = (won * np.logaddexp(0.0, -gap) + lost * np.logaddexp(0.0, gap)).sum()
        loss += 0.5 * float((ridge * strength * strength).sum())
        slope = played * expit(gap) - won
        grad = (incidence.T @ slope.T).T + ridge * strength
        return float(loss), grad.ravel()

    x0 = np.zeros((rounds, n)) if start is None else np.broadcast_to(start, (rounds, n))
    result = minimize(
        objective,
        x0.ravel(),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 5000, "gtol": 1e-9, "ftol": 1e-15},
    )
    strength = np.asarray(result.x, dtype=float).reshape(rounds, n)
    return strength if counts.ndim == 3 else strength[0]


def _to_rating(strength: np.ndarray) -> np.ndarray:
    return INIT + _POINTS * (strength - strength.mean(axis=-1, keepdims=True))


@dataclass
class Bootstrap:
    """Point ratings from all battles and `samples[r, m]`, model m's rating in round r."""

    models: list[str]
    ratings: np.ndarray
    samples: np.ndarray
    table: BattleTable

    def rating(self, model: str) -> float:
        return float(self.ratings[self.models.index(model)])


def bootstrap(votes: Sequence[Vote], *, rounds: int = 1000, seed: int = 0) -> Bootstrap:
    """Fit on all battles, then on `rounds` resamples of the battles (with replacement)."""
    if rounds < 0:
        raise InvalidInput(f"arena rounds must be 0 or more (got {rounds})")
    table = battle_table(votes)
    n = len(table.models)
    if not n:
        return Bootstrap([], np.zeros(0), np.zeros((rounds, 0)), table)
    strength = _fit(table, table.counts)
    flat = table.counts.ravel()
    battles = int(flat.sum())
    draws = np.random.default_rng(seed).multinomial(battles, flat / battles, size=rounds)
    samples = np.empty((rounds, n))
    for chunk in range(0, rounds, CHUNK):
        counts = draws[chunk : chunk + CHUNK].reshape(-1, *table.counts.shape).astype(float)
        samples[chunk : chunk + CHUNK] = _to_rating(_fit(table, counts, start=strength))
    return Bootstrap(table.models, _to_rating(strength), samples, table)


def fit_ratings(votes: Sequence[Vote]) -> dict[str, float]:
    """Bradley-Terry ratings (Elo scale, mean 1000) by model, from all battles."""
    table = battle_table(votes)
    if not table.models:
        return {}
    ratings = _to_rating(_fit(table, table.counts))
    return {name: float(value) for name, value in zip(table.models, ratings, strict=True)}


@dataclass
class Standing:
    model: str
    rating: float
    lower: float
    upper: float
    rank: int
    battles: int
    wins: int
    losses: int
    ties: int
    both_bad: int
    win_rate: float  # (wins + half of ties and both-bad) / battles, as in the fit
    flag: str | None


@dataclass
class Leaderboard:
    standings: list[Standing]
    win_rates: dict[str, dict[str, float | None]]  # [a][b]: a's score against b, None unplayed
    battle_counts: dict[str, dict[str, int]]
    rounds: int
    confidence: float
    battles: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "standings": [asdict(standing) for standing in self.standings],
            "win_rates": {a: dict(row) for a, row in self.win_rates.items()},
            "battle_counts": {a: dict(row) for a, row in self.battle_counts.items()},
            "rounds": self.rounds,
            "confidence": self.confidence,
            "battles": self.battles,
        }


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise InvalidInput(
            f"arena confidence must be between 0 and 1, e.g. 0.95 (got {confidence})"
        )


def _interval(samples: np.ndarray, center: np.ndarray, confidence: float) -> np.ndarray:
    """Percentile bootstrap bounds, shape (2, ...); the point itself when there are no rounds."""
    if not len(samples):
        return np.stack([center, center])
    tail = (1.0 - confidence) / 2.0
    return np.quantile(samples, [tail, 1.0 - tail], axis=0)


def _flags(table: BattleTable) -> list[str | None]:
    """Why a model's rating is set by the penalty rather than by battles, or None.

    The Bradley-Terry estimate exists when every group of models has scored at least once
    against the rest and conceded at least once (the "beaten by" graph is strongly
    connected); a group that never lost, never won, or never met the rest is flagged.
    """
    n = len(table.models)
    flags: list[str | None] = [None] * n
    won, lost = _scores(table.counts)
    # Edge u -> v: v scored against u.
    src = np.concatenate([table.second[won > 0], table.first[lost > 0]])
    dst = np.concatenate([table.first[won > 0], table.second[lost > 0]])
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n)).tocsr()
    groups, label = connected_components(graph, directed=True, connection="strong")
    if groups == 1:
        return flags
    crossing = label[src] != label[dst]
    conceding = set(label[src[crossing]].tolist())  # groups an outsider scored against
    scoring = set(label[dst[crossing]].tolist())  # groups that scored against an outsider
    members = [[i for i in range(n) if label[i] == group] for group in range(groups)]
    kind: list[str | None] = []
    for group in range(groups):
        lost_to_outside, won_from_outside = group in conceding, group in scoring
        if not lost_to_outside and not won_from_outside:
            kind.append("isolated")
        elif not lost_to_outside:
            kind.append("undefeated")
        elif not won_from_outside:
            kind.append("winless")
        else:
            kind.append(None)
    for group in range(groups):
        names = ", ".join(table.models[i] for i in members[group])
        if kind[group] is None:
            continue
        if kind[group] == "isolated":
            text = (
                f"not compared with the other models (its battles are only within {names}); "
                "its rating relative to them is set by regularisation"
            )
        elif len(members[group]) == 1:
            text = (
                "undefeated: won every battle; rating bounded by regularisation"
                if kind[group] == "undefeated"
                else "winless: lost every battle; rating bounded by regularisation"
            )
        else:
            # A group that only lost to (or beat) models already flagged one by one is
            # explained by their flags: e.g. the rest of the field under an undefeated model.
            inside = label[table.first] == group
            outside = np.r_[
                label[table.second][inside], label[table.first][label[table.second] == group]
            ]
            opponents = {int(o) for o in outside if o != group}
            other = "winless" if kind[group] == "undefeated" else "undefeated"
            if all(len(members[o]) == 1 and kind[o] == other for o in opponents):
                continue
            text = (
                f"undefeated as a group ({names}): never lost to a model outside it; "
                "rating bounded by regularisation"
                if kind[group] == "undefeated"
                else f"winless as a group ({names}): never won or tied against a model "
                "outside it; rating bounded by regularisation"
            )
        for i in members[group]:
            flags[i] = text
    return flags


def leaderboard(
    votes: Sequence[Vote], *, rounds: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Leaderboard:
    """Ratings with percentile-bootstrap intervals and Chatbot Arena ranks, best first.

    A model's rank is 1 + the number of models whose lower bound is above its upper bound,
    so models whose intervals overlap share a rank.
    """
    _check_confidence(confidence)
    result = bootstrap(votes, rounds=rounds, seed=seed)
    table, models = result.table, result.models
    if not models:
        return Leaderboard([], {}, {}, rounds, confidence, 0)
    lower, upper = _interval(result.samples, result.ratings, confidence)
    n = len(models)
    outcome = np.zeros((n, n, 4))  # [a, b]: a won, b won, tie, both bad, from a's side
    outcome[table.first, table.second] = table.counts
    outcome[table.second, table.first] = table.counts[:, [1, 0, 2, 3]]
    battles = outcome.sum(axis=2)
    won, _ = _scores(outcome)
    flags = _flags(table)
    standings = []
    for m, name in enumerate(models):
        wins, losses, ties, both_bad = (int(x) for x in outcome[m].sum(axis=0))
        played = wins + losses + ties + both_bad
        standings.append(
            Standing(
                model=name,
                rating=float(result.ratings[m]),
                lower=float(lower[m]),
                upper=float(upper[m]),
                rank=1 + int((lower > upper[m]).sum()),
                battles=played,
                wins=wins,
                losses=losses,
                ties=ties,
                both_bad=both_bad,
                win_rate=(wins + 0.5 * (ties + both_bad)) / played,
                flag=flags[m],
            )
        )
    standings.sort(key=lambda s: (-s.rating, s.model))
    win_rates: dict[str, dict[str, float | None]] = {}
    counts: dict[str, dict[str, int]] = {}
    for a, name in enumerate(models):
        win_rates[name] = {
            other: (float(won[a, b] / battles[a, b]) if battles[a, b] else None)
            for b, other in enumerate(models)
            if b != a
        }
        counts[name] = {other: int(battles[a, b]) for b, other in enumerate(models) if b != a}
    return Leaderboard(standings, win_rates, counts, rounds, confidence, table.battles)


def rating_difference(
    votes: Sequence[Vote],
    candidate: str,
    baseline: str,
    *,
    rounds: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """rating[candidate] - rating[baseline] with its percentile-bootstrap interval."""
    _check_confidence(confidence)
    result = bootstrap(votes, rounds=rounds, seed=seed)
    for role, name in (("candidate", candidate), ("baseline", baseline)):
        if name not in result.models:
            raise InvalidInput(
                f"arena {role} {name!r} has no battles among these votes; battle it against "
                f"the others first (models with battles: {', '.join(result.models) or 'none'})"
            )
    c, b = result.models.index(candidate), result.models.index(baseline)
    estimate = float(result.ratings[c] - result.ratings[b])
    low, high = _interval(
        result.samples[:, c] - result.samples[:, b], np.asarray(estimate), confidence
    )
    return estimate, float(low), float(high)
