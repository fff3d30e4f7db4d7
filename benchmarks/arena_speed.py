"""Benchmark: arena leaderboard (Bradley-Terry fit + bootstrap) on many battles.

Times `leaderboard` (aggregation, fit, 1,000 bootstrap rounds) on N synthetic battles among
M models, against two baselines in the same run:
- the same at N/10 battles: aggregated rows make the cost grow far less than linearly;
- the same fit on the raw battle list (one row per battle, bootstrap by resampling battle
  indices, as FastChat's notebook does), timed over a few rounds and scaled to the full count.
Usage: python benchmarks/arena_speed.py [N] [M] [ROUNDS]
"""

from __future__ import annotations

import sys
import time

import numpy as np

from runners.arena.outcomes import WINNERS, Vote
from runners.arena.ratings import BattleTable, _fit, _to_rating, battle_table, leaderboard

RAW_ROUNDS = 5  # the raw baseline is timed over this many rounds, then scaled


def synthetic(battles: int, models: int, seed: int = 0) -> list[Vote]:
    rng = np.random.default_rng(seed)
    strength = rng.normal(0.0, 1.0, models)
    a = rng.integers(0, models, battles)
    b = (a + rng.integers(1, models, battles)) % models
    p_a = 1.0 / (1.0 + np.exp(strength[b] - strength[a]))
    tie, coin = rng.random(battles), rng.random(battles)
    outcome = np.where(tie < 0.1, 2 + (tie < 0.03), np.where(coin < p_a, 0, 1))
    names = [f"model-{i:02d}" for i in range(models)]
    return [
        Vote(names[i], names[j], WINNERS[o])  # type: ignore[arg-type]
        for i, j, o in zip(a.tolist(), b.tolist(), outcome.tolist(), strict=True)
    ]


def timed(votes: list[Vote], rounds: int) -> float:
    start = time.perf_counter()
    board = leaderboard(votes, rounds=rounds, seed=1)
    elapsed = time.perf_counter() - start
    assert len(board.standings) > 1
    return elapsed


def raw_baseline(votes: list[Vote], rounds: int) -> tuple[float, np.ndarray]:
    """The same penalised fit with one row per battle; seconds per bootstrap round."""
    table = battle_table(votes)
    index = {name: i for i, name in enumerate(table.models)}
    first = np.array([index[v.model_a] for v in votes], dtype=np.intp)
    second = np.array([index[v.model_b] for v in votes], dtype=np.intp)
    onehot = np.eye(4)[[WINNERS.index(v.winner) for v in votes]]
    raw = BattleTable(table.models, first, second, onehot)
    point = _fit(raw, onehot)
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    for _ in range(rounds):
        _fit(raw, onehot[rng.integers(0, len(votes), len(votes))], start=point)
    return (time.perf_counter() - start) / rounds, _to_rating(point)


def main() -> None:
    battles = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    models = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    votes = synthetic(battles, models)
    small = votes[: battles // 10]
    print(f"arena leaderboard: {models} models, {rounds} bootstrap rounds")
    big_s = timed(votes, rounds)
    print(f"  {battles:>9,} battles (aggregated rows): {big_s:7.2f} s")
    small_s = timed(small, rounds)
    print(f"  {len(small):>9,} battles (aggregated rows): {small_s:7.2f} s")
    print(f"  10x the battles costs {big_s / small_s:.2f}x the time (linear growth would be 10x)")
    per_round, raw_ratings = raw_baseline(votes, RAW_ROUNDS)
    table = battle_table(votes)
    agg = _to_rating(_fit(table, table.counts))
    raw_total = per_round * (rounds + 1)
    print(
        f"  baseline, raw battle list (one row per battle): {per_round * 1000:.0f} ms a round, "
        f"~{raw_total:.0f} s for {rounds} rounds (timed over {RAW_ROUNDS})"
    )
    print(f"  aggregated is {raw_total / big_s:.0f}x faster than the raw baseline")
    print(f"  same ratings either way: max difference {np.abs(raw_ratings - agg).max():.2e} points")


if __name__ == "__main__":
    main()
