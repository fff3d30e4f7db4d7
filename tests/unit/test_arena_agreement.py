"""Judge quality: position bias from both orders, percent agreement and Cohen's kappa against
human votes (a hand-computed table, and a seeded table whose true agreement is known)."""

from __future__ import annotations

import random

import pytest

from runners.arena.agreement import agreement, cohen_kappa, percent_agreement, position_bias
from runners.arena.judge import judge_battle


def test_a_judge_that_always_prefers_the_first_answer_has_position_bias_one() -> None:
    class FirstAlways:
        def verdict(self, question: str, first: str, second: str) -> tuple[str, str]:
            return "A", "[[A]]"

    battles = [judge_battle(FirstAlways(), "q", "one", "two") for _ in range(5)]
    orders = [(b.verdicts[0]["verdict"], b.verdicts[1]["verdict"]) for b in battles]
    assert position_bias(orders) == (1.0, 5)


def test_position_bias_counts_flips_only_and_skips_unparseable_orders() -> None:
    orders = [
        ("A", "B"),  # model_a both times: consistent
        ("B", "A"),  # model_b both times: consistent
        ("tie", "both_bad"),  # no preference either way: consistent
        ("A", "A"),  # model_a, then model_b: a flip
        ("A", None),  # unparseable: not compared
    ]
    assert position_bias(orders) == (0.25, 4)
    assert position_bias([(None, "A")]) == (None, 0)


# (judge, human) per vote; by hand: 6 of 10 agree, so p_o = 0.6. The judge said model_a 5
# times, model_b 3, tie 2; people model_a 4, model_b 4, tie 2; so
# p_e = (5*4 + 3*4 + 2*2) / 100 = 0.36 and kappa = (0.6 - 0.36) / (1 - 0.36) = 0.375.
TABLE = [
    ("model_a", "model_a"),
    ("model_a", "model_a"),
    ("model_a", "model_b"),
    ("model_b", "model_b"),
    ("model_b", "tie"),
    ("tie", "tie"),
    ("tie", "model_a"),
    ("model_a", "model_a"),
    ("model_b", "model_b"),
    ("model_a", "model_b"),
]


def test_kappa_and_percent_match_the_hand_computation() -> None:
    assert percent_agreement(TABLE) == pytest.approx(0.6)
    assert cohen_kappa(TABLE) == pytest.approx(0.375)
    # "both bad" is a tie for agreement
    found = agreement([[(j, "tie (bothbad)" if h == "tie" else h)] for j, h in TABLE], rounds=50)
    assert found.kappa == pytest.approx(0.375) and found.pairs == 10 and found.battles == 10


def test_kappa_edge_cases() -> None:
    assert cohen_kappa([]) is None
    assert cohen_kappa([("tie", "tie")] * 4) is None  # one outcome throughout: undefined
    perfect = [("model_a", "model_a"), ("model_b", "model_b")] * 3
    assert cohen_kappa(perfect) == pytest.approx(1.0)
    opposite = [("model_a", "model_b"), ("model_b", "model_a")] * 3
    assert cohen_kappa(opposite) == pytest.approx(-1.0)


def test_agreement_recovers_a_known_truth_within_its_interval() -> None:
    """People vote model_a / model_b / tie with shares 0.45 / 0.35 / 0.20; the judge copies
    the person with probability 0.6, else votes independently with the same shares. Then
    kappa is 0.6 exactly and percent agreement 0.6 + 0.4 * (0.45² + 0.35² + 0.2²) = 0.746."""
    rng = random.Random(7)
    outcomes, shares = ["model_a", "model_b", "tie"], [0.45, 0.35, 0.20]
    battles = []
    for _ in range(1500):
        human = rng.choices(outcomes, shares)[0]
        judge = human if rng.random() < 0.6 else rng.choices(outcomes, shares)[0]
        battles.append([(judge, human)])
    found = agreement(battles, rounds=400, confidence=0.95, seed=0)
    assert found.kappa_interval is not None and found.percent_interval is not None
    low, high = found.kappa_interval
    assert low < 0.6 < high and high - low < 0.1, found
    low, high = found.percent_interval
    assert low < 0.746 < high and high - low < 0.1, found
    # a judge that ignores people entirely: kappa near 0, and its interval says so
    noise = [[(rng.choices(outcomes, shares)[0], b[0][1])] for b in battles]
    chance = agreement(noise, rounds=400, seed=0)
    assert chance.kappa_interval is not None
    assert chance.kappa_interval[0] < 0.0 < chance.kappa_interval[1]
