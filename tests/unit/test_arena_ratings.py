"""Arena ratings: Bradley-Terry recovers known strengths; intervals cover at their rate."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace

import numpy as np
import pytest

from runners.arena.outcomes import Vote
from runners.arena.ratings import (
    SCALE,
    Leaderboard,
    bootstrap,
    fit_ratings,
    leaderboard,
    rating_difference,
)
from runners.errors import InvalidInput

MODELS = ["m0", "m1", "m2", "m3", "m4"]


def simulate(
    rng: np.random.Generator, ratings: np.ndarray, battles: int, tie_rate: float = 0.1
) -> list[Vote]:
    """Battles between random pairs whose expected score follows Bradley-Terry (Elo scale).

    With probability `tie_rate` a battle is a tie (half of those "both bad"), which scores
    half a point each; otherwise a win, drawn so that a's expected score is
    p = 1 / (1 + 10 ** ((r_b - r_a) / 400)): P(win | decisive) = (p - tie_rate / 2) /
    (1 - tie_rate). The half-win fit is then consistent for the true ratings.
    """
    n = len(ratings)
    a = rng.integers(0, n, battles)
    b = (a + rng.integers(1, n, battles)) % n
    p = 1.0 / (1.0 + 10.0 ** ((ratings[b] - ratings[a]) / SCALE))
    p = (p - tie_rate / 2) / (1 - tie_rate)
    assert ((p >= 0) & (p <= 1)).all(), "rating gaps too wide for this tie rate"
    tie, coin, bad = rng.random(battles), rng.random(battles), rng.random(battles)
    votes = []
    for k in range(battles):
        if tie[k] < tie_rate:
            winner = "tie (bothbad)" if bad[k] < 0.5 else "tie"
        else:
            winner = "model_a" if coin[k] < p[k] else "model_b"
        votes.append(Vote(MODELS[a[k]], MODELS[b[k]], winner))  # type: ignore[arg-type]
    return votes


def test_fit_recovers_order_and_intervals_cover_true_differences_at_their_rate() -> None:
    rng = np.random.default_rng(20240501)
    covered = total = exact_order = 0
    errors, rhos = [], []
    tables = 40
    for table in range(tables):
        if table % 2:  # random strengths, some close together
            truth = np.sort(rng.uniform(-200.0, 200.0, len(MODELS)))[::-1]  # m0 strongest
        else:  # well separated: gaps of 60 to 100 points
            truth = np.linspace(200.0, -200.0, len(MODELS)) + rng.uniform(-20, 20, len(MODELS))
        truth = truth - truth.mean() + 1000.0
        votes = simulate(rng, truth, 3000)
        result = bootstrap(votes, rounds=200, seed=int(rng.integers(1 << 31)))
        order = list(np.argsort(-result.ratings))
        gaps = -np.diff(truth)
        if gaps.min() > 60.0:  # well separated: the fit must get the exact order
            exact_order += 1
            assert [result.models[i] for i in order] == MODELS
        # Spearman correlation always high.
        rank_fit = np.argsort(np.argsort(-result.ratings))
        rho = np.corrcoef(rank_fit, np.arange(len(MODELS)))[0, 1]
        assert rho >= 0.6
        rhos.append(rho)
        errors.extend(result.ratings - truth)
        for i in range(len(MODELS)):
            for j in range(i + 1, len(MODELS)):
                diffs = result.samples[:, i] - result.samples[:, j]
                low, high = np.quantile(diffs, [0.025, 0.975])
                covered += bool(low <= truth[i] - truth[j] <= high)
                total += 1
    rate = covered / total
    assert 0.88 <= rate <= 0.99, f"95% intervals covered {rate:.3f} of {total} true differences"
    assert float(np.mean(rhos)) >= 0.9
    assert exact_order >= tables // 2  # the exact-order check above did run on several tables
    assert abs(float(np.mean(errors))) < 2.0  # mean pinned at 1000, no systematic bias
    assert float(np.sqrt(np.mean(np.square(errors)))) < 25.0


def test_ties_and_both_bad_count_as_half_a_win_each_way_but_stay_distinct() -> None:
    votes = [Vote("x", "y", "model_a")] * 6 + [Vote("x", "y", "model_b")] * 2
    with_ties = votes + [Vote("x", "y", "tie")] * 4
    with_bad = votes + [Vote("x", "y", "tie (bothbad)")] * 4
    decisive = votes + [Vote("x", "y", "model_a")] * 2 + [Vote("x", "y", "model_b")] * 2
    tied, bad, plain = fit_ratings(with_ties), fit_ratings(with_bad), fit_ratings(decisive)
    # x scores 8 of 12 points in all three: the same fit.
    assert tied["x"] == pytest.approx(plain["x"], abs=1e-6)
    assert bad["x"] == pytest.approx(plain["x"], abs=1e-6)
    # The odds 8:4 = 2 give 400 * log10(2) points, less a hair of regularisation.
    gap = tied["x"] - tied["y"]
    assert gap == pytest.approx(SCALE * math.log10(2.0), abs=1.0)
    assert (tied["x"] + tied["y"]) / 2 == pytest.approx(1000.0)
    board = {s.model: s for s in leaderboard(with_bad, rounds=20).standings}
    assert (board["x"].wins, board["x"].losses, board["x"].ties, board["x"].both_bad) == (
        6,
        2,
        0,
        4,
    )
    board = {s.model: s for s in leaderboard(with_ties, rounds=20).standings}
    assert (board["y"].wins, board["y"].losses, board["y"].ties, board["y"].both_bad) == (
        2,
        6,
        4,
        0,
    )
    assert board["x"].win_rate == pytest.approx(8 / 12)


def test_reversing_every_vote_gives_the_same_ratings() -> None:
    rng = np.random.default_rng(7)
    votes = simulate(rng, np.array([1100.0, 1050.0, 1000.0, 950.0, 900.0]), 500)
    forward, backward = fit_ratings(votes), fit_ratings([v.reversed() for v in votes])
    assert forward.keys() == backward.keys()
    for name in forward:
        assert backward[name] == pytest.approx(forward[name], abs=1e-6)
    one = leaderboard(votes, rounds=50, seed=3)
    two = leaderboard([v.reversed() for v in reversed(votes)], rounds=50, seed=3)
    assert [(s.model, round(s.lower, 6)) for s in one.standings] == [
        (s.model, round(s.lower, 6)) for s in two.standings
    ]


def test_vote_reversed_maps_the_winner() -> None:
    vote = Vote("p", "q", "model_a", voter_kind="human", voter_id="ann", question_id="7")
    assert vote.reversed() == Vote(
        "q", "p", "model_b", voter_kind="human", voter_id="ann", question_id="7"
    )
    assert Vote("p", "q", "tie (bothbad)").reversed().winner == "tie (bothbad)"
    with pytest.raises(ValueError, match="winner"):
        Vote("p", "q", "draw")  # type: ignore[arg-type]


def test_undefeated_model_gets_a_finite_rating_a_flag_and_no_warning() -> None:
    votes = (
        [Vote("champ", "x", "model_a")] * 30
        + [Vote("y", "champ", "model_b")] * 30
        + [Vote("x", "y", "model_a")] * 10
        + [Vote("x", "y", "model_b")] * 10
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        board = leaderboard(votes, rounds=100)
        ratings = fit_ratings(votes)
    top = board.standings[0]
    assert top.model == "champ" and top.rank == 1
    assert all(math.isfinite(v) for s in board.standings for v in (s.rating, s.lower, s.upper))
    assert math.isfinite(ratings["champ"]) and ratings["champ"] > ratings["x"] + 400
    assert top.flag is not None and top.flag.startswith("undefeated")
    assert [s.flag for s in board.standings[1:]] == [None, None]
    flipped = [replace(v, winner=v.reversed().winner) for v in votes]  # champ loses all
    losing = leaderboard(flipped, rounds=20)
    assert losing.standings[-1].model == "champ"
    assert losing.standings[-1].flag is not None
    assert losing.standings[-1].flag.startswith("winless")


def test_a_group_never_compared_with_the_rest_is_flagged() -> None:
    votes = [Vote("a", "b", "model_a"), Vote("a", "b", "model_b")] * 5 + [
        Vote("c", "d", "model_a"),
        Vote("c", "d", "tie"),
    ] * 5
    flags = {s.model: s.flag for s in leaderboard(votes, rounds=10).standings}
    assert all(flag is not None and "not compared" in flag for flag in flags.values())


def test_empty_votes_give_an_empty_leaderboard() -> None:
    board = leaderboard([], rounds=10)
    assert isinstance(board, Leaderboard)
    assert board.standings == [] and board.battles == 0
    assert json.loads(json.dumps(board.as_dict()))["standings"] == []
    assert fit_ratings([]) == {}


def test_overlapping_intervals_share_a_rank() -> None:
    # a and b are nearly equal with few battles; c is far below both.
    votes = (
        [Vote("a", "b", "model_a")] * 11
        + [Vote("a", "b", "model_b")] * 9
        + [Vote("a", "c", "model_a")] * 190
        + [Vote("a", "c", "model_b")] * 10
        + [Vote("b", "c", "model_a")] * 185
        + [Vote("b", "c", "model_b")] * 15
    )
    board = leaderboard(votes, rounds=300, seed=1)
    by = {s.model: s for s in board.standings}
    assert [s.model for s in board.standings] == ["a", "b", "c"]
    assert by["b"].upper > by["a"].lower  # they overlap
    assert by["a"].rank == by["b"].rank == 1
    assert by["c"].upper < by["b"].lower
    assert by["c"].rank == 3
    for s in board.standings:
        assert s.lower <= s.rating <= s.upper
    data = json.loads(json.dumps(board.as_dict()))
    assert data["battle_counts"]["a"]["c"] == 200 and data["battles"] == 420
    assert data["win_rates"]["c"]["a"] == pytest.approx(10 / 200)
    assert data["standings"][0]["model"] == "a"


def test_win_rates_are_none_for_pairs_that_never_met() -> None:
    votes = [Vote("a", "b", "model_a"), Vote("b", "c", "tie"), Vote("c", "a", "model_a")]
    board = leaderboard(votes, rounds=5)
    assert board.win_rates["a"]["b"] == 1.0 and board.win_rates["b"]["a"] == 0.0
    assert board.win_rates["b"]["c"] == 0.5
    assert board.battle_counts["a"] == {"b": 1, "c": 1}
    sparse = leaderboard(votes[:2], rounds=5)
    assert sparse.win_rates["a"]["c"] is None and sparse.battle_counts["a"]["c"] == 0


def test_rating_difference_has_the_right_sign_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(11)
    votes = simulate(rng, np.array([1200.0, 1100.0, 1000.0, 900.0, 800.0]), 2000)
    estimate, low, high = rating_difference(votes, "m0", "m4", rounds=200)
    assert 0 < low <= estimate <= high
    assert abs(estimate - 400.0) < 60.0
    back = rating_difference(votes, "m4", "m0", rounds=200)
    assert back[0] == pytest.approx(-estimate)
    assert back[1] == pytest.approx(-high) and back[2] == pytest.approx(-low)
    close = rating_difference(votes, "m1", "m2", rounds=200, confidence=0.999)
    assert close[1] < close[0] < close[2]
    with pytest.raises(InvalidInput, match="'nobody' has no battles"):
        rating_difference(votes, "nobody", "m0", rounds=10)


def test_self_battle_and_bad_confidence_are_user_errors() -> None:
    with pytest.raises(InvalidInput, match="against itself"):
        fit_ratings([Vote("a", "a", "tie")])
    with pytest.raises(InvalidInput, match="between 0 and 1"):
        leaderboard([Vote("a", "b", "tie")], confidence=95)


def test_bootstrap_is_reproducible_by_seed() -> None:
    votes = simulate(np.random.default_rng(3), np.array([1050.0, 1000, 990, 980, 900]), 400)
    one, two = bootstrap(votes, rounds=30, seed=5), bootstrap(votes, rounds=30, seed=5)
    other = bootstrap(votes, rounds=30, seed=6)
    assert np.array_equal(one.samples, two.samples)
    assert not np.array_equal(one.samples, other.samples)
