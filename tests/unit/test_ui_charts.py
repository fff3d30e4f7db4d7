"""Dashboard data shaping (controller/ui/charts.py): interval and whisker geometry,
histograms, smoothing, curve columns from a training log, config differences."""

from __future__ import annotations

import pytest

from controller.ui.charts import (
    config_diff,
    heat_colour,
    histogram_bars,
    interval_bars,
    run_series,
    smooth,
    whiskers,
)


def test_interval_bars_share_one_scale_that_includes_zero() -> None:
    bars, zero = interval_bars([("a", 1.0, 0.5, 1.5), ("b", -0.2, -0.6, 0.1)], width=100)
    a, b = bars
    assert a.x_low < a.x < a.x_high and b.x_low < b.x < b.x_high
    assert b.x_low < zero < b.x_high  # b's interval crosses zero
    assert a.significant and not b.significant
    assert 0 <= min(b.x_low, a.x_low) and max(a.x_high, b.x_high) <= 100


def test_interval_bars_with_no_spread_do_not_divide_by_zero() -> None:
    bars, zero = interval_bars([("m", 0.0, 0.0, 0.0)])
    assert bars[0].x == bars[0].x_low == bars[0].x_high == zero


def test_whiskers_are_not_anchored_at_zero() -> None:
    high, low = whiskers([("x", 1050, 1000, 1100), ("y", 950, 900, 1000)], width=200)
    assert low.x_low == pytest.approx(200 * 0.05 / 1.1, abs=0.5)  # 5% padding each side
    assert high.x > low.x and high.x_low == low.x_high


def test_histogram_bars_scale_to_the_tallest() -> None:
    bars = histogram_bars({"edges": [0, 5, 10, 15], "counts": [1, 4, 2]}, width=90, height=40)
    assert [b.height for b in bars] == [10.0, 40.0, 20.0]
    assert [b.label for b in bars] == ["0-5", "5-10", "10-15"]
    assert histogram_bars({"count": 0}) == [] and histogram_bars(None) == []


def test_smoothing_is_debiased_and_keeps_gaps() -> None:
    assert smooth([2.0, None, 2.0], 0.9) == [pytest.approx(2.0), None, pytest.approx(2.0)]
    assert smooth([1.0, 3.0], 0.0) == [1.0, 3.0]
    with pytest.raises(ValueError):
        smooth([1.0], 1.0)


def test_run_series_sums_tokens_and_time_per_step_and_skips_events() -> None:
    records = [
        {"step": 0, "eval_loss": 5.0},
        {"step": 1, "loss": 4.0, "lr": 1e-3, "grad_norm": 0.5, "tokens": 100, "tokens_per_s": 50.0},
        {"event": "resumed", "step": 1},
        {
            "step": 2,
            "loss": 3.0,
            "lr": 5e-4,
            "grad_norm": 0.4,
            "tokens": 100,
            "tokens_per_s": 100.0,
            "eval_loss": 4.5,
        },
    ]
    columns = run_series(records)
    assert columns["step"] == [0, 1, 2]
    assert columns["tokens"] == [0, 100, 200]
    assert columns["time"] == [0, 2.0, 3.0]
    assert columns["loss"] == [None, 4.0, 3.0]
    assert columns["eval_loss"] == [5.0, None, 4.5]
    assert run_series([{"step": 1, "loss": float("nan")}])["loss"] == [None]


def test_config_diff_shows_only_what_differs() -> None:
    configs = {
        "a": {"training": {"learning_rate": 1e-3, "lora": {"r": 4}, "steps": 4}},
        "b": {"training": {"learning_rate": 3e-3, "lora": {"r": 4}, "steps": 4, "seed": 1}},
    }
    assert config_diff(configs) == [
        ("training.learning_rate", [1e-3, 3e-3]),
        ("training.seed", [None, 1]),
    ]
    assert config_diff({"a": configs["a"], "c": configs["a"]}) == []


def test_heat_colour_runs_from_red_through_white_to_green() -> None:
    assert heat_colour(0.5) == "#ffffff"
    assert heat_colour(1.0) == "#64c864"
    assert heat_colour(0.0) == "#ff6464"
    assert heat_colour(None) == "#eeeeee"
