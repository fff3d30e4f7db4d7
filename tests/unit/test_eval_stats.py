"""Evaluation statistics: paired bootstrap, gates, metrics and judge-score parsing."""

from __future__ import annotations

import math
import random

import pytest

from runners.evaluate.compare import aggregate, judge_gates, paired_bootstrap
from runners.evaluate.judge import parse_score
from runners.evaluate.metrics import keyword_recall, normalize_answer, token_f1


def test_identical_results_differ_by_zero_with_an_interval_containing_it() -> None:
    rng = random.Random(1)
    values = {str(i): (float(rng.random() > 0.5), 1.0) for i in range(50)}
    c = paired_bootstrap("t/accuracy", values, dict(values), samples=500)
    assert c.difference == 0 and c.low <= 0 <= c.high and c.p_value == 1.0
    assert c.flipped == {"better": [], "worse": []}


def test_a_clear_improvement_has_an_interval_above_zero() -> None:
    base = {str(i): (float(i % 4 == 0), 1.0) for i in range(200)}
    cand = {str(i): (float(i % 4 != 3), 1.0) for i in range(200)}
    c = paired_bootstrap("t/accuracy", base, cand, samples=500)
    assert c.difference == pytest.approx(0.5)
    assert c.low > 0.4 and c.p_value < 0.01
    assert len(c.flipped["better"]) == 100 and not c.flipped["worse"]


def test_perplexity_aggregates_loglikelihoods() -> None:
    parts = [(-10.0, 5.0), (-20.0, 5.0)]
    assert aggregate("t/perplexity", parts) == pytest.approx(math.exp(3.0))
    assert aggregate("t/token_f1", [(0.5, 1), (1.0, 1)]) == 0.75


def test_gates_respect_metric_direction() -> None:
    base = {str(i): (-10.0, 5.0) for i in range(30)}
    worse = {str(i): (-15.0, 5.0) for i in range(30)}  # higher perplexity
    c = paired_bootstrap("t/perplexity", base, worse, samples=200)
    results = judge_gates(
        [{"metric": "t/perplexity", "max_drop": 0.5}, {"metric": "t/perplexity", "max": 100.0}],
        {"t/perplexity": c},
        {"t/perplexity": c.candidate},
    )
    assert [(r.rule, r.passed) for r in results] == [("max_drop 0.5", False), ("max 100", True)]


def test_non_inferiority_uses_the_interval() -> None:
    rng = random.Random(0)
    base = {str(i): (float(rng.random() < 0.6), 1.0) for i in range(40)}
    cand = dict(base)
    c = paired_bootstrap("t/accuracy", base, cand, samples=200)
    (gate,) = judge_gates(
        [{"metric": "t/accuracy", "non_inferiority_margin": 0.05}], {"t/accuracy": c}, {}
    )
    assert gate.passed
    (needs,) = judge_gates([{"metric": "t/accuracy", "max_drop": 0.1}], {}, {})
    assert not needs.passed and "needs a baseline" in needs.detail


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("Score: 4. Clear and correct.", 4.0),
        ("I'd give it 3/5", 3.0),
        ("5", 5.0),
        ("score=2", 2.0),
        ("Rating 9 out of 10", None),
        ("no number", None),
    ],
)
def test_judge_score_parsing(text: str, score: float | None) -> None:
    assert parse_score(text, 1, 5) == score


def test_text_metrics() -> None:
    assert normalize_answer("The  Team plan!") == "team plan"
    assert token_f1("Team plan costs $8", "The Team plan costs $8 per user") == pytest.approx(
        2 * 1.0 * (4 / 6) / (1 + 4 / 6)
    )
    assert keyword_recall("It costs $8 per month", ["$8", "annual"]) == 0.5
