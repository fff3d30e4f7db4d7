"""Curves people can read: axis ticks labelled by magnitude (runners/train/curves.py, the
same rule as the dashboard's curves.js), TensorBoard's debiased moving average
(controller/ui/charts.py), and the PNG's learning-rate axis never reading "0" for 2e-4."""

from __future__ import annotations

import pytest

from controller.ui.charts import SMOOTH_MIN_POINTS, smooth
from runners.train.curves import curves_figure, tick_label, tick_labels


def test_small_values_are_written_in_scientific_notation_never_zero() -> None:
    assert tick_labels([0.0, 1e-4, 2e-4, 3.0000000000000003e-4]) == ["0", "1e-4", "2e-4", "3e-4"]
    assert tick_labels([1.5e-4, 2e-4, 2.5e-4]) == ["1.5e-4", "2e-4", "2.5e-4"]
    assert tick_label(2e-4) == "2e-4"  # alone: its own magnitude sets the format
    assert tick_label(-3e-5, 1e-5) == "-3e-5"
    assert tick_label(2.7e-20, 1e-4) == "0"  # float noise at the zero tick


def test_ordinary_values_get_the_decimals_their_spacing_needs() -> None:
    assert tick_labels([0.0, 0.5, 1.0, 1.5]) == ["0", "0.5", "1.0", "1.5"]
    assert tick_labels([2.0, 2.25, 2.5]) == ["2.00", "2.25", "2.50"]
    assert tick_labels([10.0, 20.0, 30.0]) == ["10", "20", "30"]
    assert tick_labels([0.001, 0.002]) == ["0.001", "0.002"]
    assert tick_labels([0.1, 0.2, 0.30000000000000004]) == ["0.1", "0.2", "0.3"]
    assert tick_labels([0.0, 1e5, 2e5]) == ["0", "1e5", "2e5"]
    # Close ticks of ordinary values stay fixed-point (an eval loss near 5.93).
    assert tick_labels([5.929, 5.93, 5.931]) == ["5.929", "5.930", "5.931"]
    assert tick_labels([0.0, 0.0005, 0.001]) == ["0", "0.0005", "0.0010"]
    assert tick_label(float("nan")) == ""


def test_every_nonzero_tick_reads_back_as_its_value() -> None:
    for ticks in ([0.0, 5e-5, 1e-4, 1.5e-4], [0.002, 0.004, 0.006], [1.2, 1.4, 1.6], [0, 2500]):
        for tick, label in zip(ticks, tick_labels(ticks), strict=True):
            assert float(label) == pytest.approx(tick, rel=1e-6, abs=1e-12), (ticks, label)
        assert len(set(tick_labels(ticks))) == len(ticks)


def test_the_moving_average_is_debiased_as_tensorboard_does() -> None:
    values = [3.0, 2.5, 2.0]
    weight = 0.6
    expected = []
    for n in range(1, len(values) + 1):  # closed form: weights w^(n-i) (1-w), normalised
        terms = [weight ** (n - 1 - i) * (1 - weight) * v for i, v in enumerate(values[:n])]
        expected.append(sum(terms) / (1 - weight**n))
    assert smooth(values, weight) == pytest.approx(expected)
    assert smooth(values, weight) == pytest.approx([3.0, 2.6875, 2.3367347])
    # The first point is never pulled toward zero (the undebiased average starts at 1.2)...
    assert smooth([3.0], 0.6)[0] == pytest.approx(3.0)
    # ...but over a handful of points it still lags, which is why short series are not smoothed.
    assert smooth(values, weight)[-1] - values[-1] > 0.3
    assert SMOOTH_MIN_POINTS >= 10


def test_the_png_learning_rate_axis_reads_by_magnitude() -> None:
    import matplotlib.pyplot as plt

    log = [
        {"step": s, "loss": 3.0 - 0.1 * s, "lr": 2e-4 * (1 - s / 10), "grad_norm": 1.0}
        for s in range(10)
    ] + [{"step": 4, "eval_loss": 2.9}, {"step": 9, "eval_loss": 2.5}]
    figure = curves_figure({"run default → assistant@1": log}, "experiment exp")
    try:
        figure.canvas.draw()
        lr_axis = next(a for a in figure.axes if a.get_title() == "learning rate")
        ticks = lr_axis.get_yticks()
        labels = [t.get_text() for t in lr_axis.get_yticklabels()]
        assert any(0 < t < 1e-2 for t in ticks)
        for tick, label in zip(ticks, labels, strict=True):
            if abs(tick) > 1e-12:
                assert label != "0" and float(label) == pytest.approx(tick, rel=1e-6), labels
        assert lr_axis.yaxis.get_offset_text().get_text() == ""  # no "1e-4" multiplier aside
        assert figure.texts[0].get_text() == "experiment exp"
    finally:
        plt.close(figure)
