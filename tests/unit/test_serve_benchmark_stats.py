"""The serving benchmark's statistics: what a level's row reports from its request outcomes."""

from __future__ import annotations

import math

from benchmarks.serve_throughput import Outcome, percentile, summarize


def test_percentiles_interpolate_between_samples() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.5
    assert math.isclose(percentile(values, 99), 99.01)
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5  # unsorted input


def test_percentile_of_one_sample_is_that_sample_and_of_none_is_nan() -> None:
    assert percentile([0.7], 99) == 0.7
    assert math.isnan(percentile([], 50))


def test_errors_are_counted_by_status_and_left_out_of_tokens_and_latency() -> None:
    outcomes = [
        Outcome(1.0, 200, 32),
        Outcome(3.0, 200, 16),
        Outcome(0.01, 429),
        Outcome(0.02, 429),
        Outcome(9.0, 0),
    ]
    row = summarize(outcomes, wall_s=4.0)
    assert row.ok == 2
    assert row.errors == {"429": 2, "transport": 1}
    assert row.tokens_per_s == 12.0  # 48 tokens over the whole level's 4 s
    assert row.requests_per_s == 0.5
    assert row.tokens_per_request == 24.0
    assert row.p50_s == 2.0  # the fast 429s do not pull latency down


def test_a_level_without_answers_reports_nan_not_a_crash() -> None:
    row = summarize([Outcome(0.1, 500)], wall_s=1.0)
    assert row.ok == 0 and row.errors == {"500": 1}
    assert row.tokens_per_s == 0.0
    assert math.isnan(row.p50_s) and math.isnan(row.tokens_per_request)
