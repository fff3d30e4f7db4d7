"""Brain scan alarms grouped by phenomenon and compared with the base; robust heatmap limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runners.inspect.alarms import AlarmOptions, activation_alarms, all_alarms, group_alarms
from runners.inspect.plots import _grid_png, clipped_text, robust_limits


def _hit(layer: int, dim: int, token: str, ratio: float) -> dict[str, Any]:
    return {
        "layer": layer,
        "prompt": 0,
        "position": 0,
        "token": token,
        "dim": dim,
        "value": ratio * 0.1,
        "median_abs": 0.1,
        "ratio": ratio,
    }


def _acts(hits: list[dict[str, Any]], dead: float = 0.0) -> dict[str, Any]:
    return {
        "massive": hits,
        "mlp": [{"layer": i, "neurons": 64, "never_active_fraction": dead} for i in range(30)],
        "options": {"massive_ratio": 100.0},
    }


SINK = [_hit(layer, 507, "What", 300.0 + layer) for layer in range(1, 29)]


def test_a_sink_over_28_layers_is_one_alarm_listing_them() -> None:
    alarms, context = activation_alarms(_acts(SINK), 0.5)
    assert context == []
    (found,) = alarms
    assert found["kind"] == "massive_activation" and found["layers"] == list(range(1, 29))
    assert found["dim"] == 507 and found["token"] == "What"
    assert "layers 1-28" in found["reason"] and "328x" in found["reason"]
    assert found["phenomenon"] == "massive_activation:507:What"


def test_what_the_base_has_at_a_similar_size_is_context_not_an_alarm() -> None:
    new = [_hit(layer, 9, "?", 500.0) for layer in (4, 5, 6, 9)]
    tuned = [{**h, "base_ratio": h["ratio"] * 0.9} for h in SINK] + [
        {**h, "base_ratio": 2.0} for h in new
    ]
    base = _acts([*SINK, _hit(3, 77, "the", 150.0)])
    alarms, context = activation_alarms(_acts(tuned), 0.5, base)
    assert [(a["dim"], a["token"], a["layers"]) for a in alarms] == [(9, "?", [4, 5, 6, 9])]
    assert "new massive activation" in alarms[0]["reason"] and "4-6, 9" in alarms[0]["reason"]
    assert {c["phenomenon"] for c in context} == {
        "massive_activation:507:What",  # in both at a similar size
        "massive_activation:77:the",  # in the base only
    }
    # Three times the base's size is no longer "similar": an alarm that says it grew.
    grown = [{**h, "base_ratio": h["ratio"] / 3} for h in SINK]
    alarms, _ = activation_alarms(_acts(grown), 0.5, _acts(SINK))
    assert len(alarms) == 1 and alarms[0]["reason"].startswith("massive activation grew from")


def test_dead_neurons_are_one_alarm_and_the_base_decides() -> None:
    alarms, _ = activation_alarms(_acts([], dead=0.8), 0.5)
    (found,) = alarms
    assert found["kind"] == "dead_neurons" and found["layers"] == list(range(30))
    alarms, context = activation_alarms(_acts([], dead=0.8), 0.5, _acts([], dead=0.75))
    assert alarms == [] and [c["kind"] for c in context] == ["dead_neurons"]


def test_per_layer_norm_alarms_of_one_module_become_one_ordered_by_severity() -> None:
    weights = []
    for layer in range(8):
        for module, scale in (("q_proj", 1.0), ("up_proj", 1.0)):
            if module == "up_proj" and layer in (2, 5):
                scale = 50.0
            weights.append(
                {
                    "tensor": f"model.layers.{layer}.mlp.{module}.weight",
                    "layer": layer,
                    "module": module,
                    "frobenius": scale * (1.0 + 0.001 * layer),
                }
            )
    alarms, context = all_alarms(weights, [], None, _acts(SINK), {}, AlarmOptions(spread_k=6.0))
    assert [(a["kind"], a["severity"]) for a in alarms] == [
        ("norm_outlier", "error"),
        ("massive_activation", "warning"),
    ]
    assert alarms[0]["layers"] == [2, 5] and alarms[0]["count"] == 2
    assert "2 layers (2, 5)" in alarms[0]["reason"] and context == []
    single = group_alarms([{**alarms[1], "phenomenon": None}])
    assert single[0]["layers"] == list(range(1, 29))


def test_one_outlier_cell_does_not_saturate_the_colour_scale(tmp_path: Path) -> None:
    rows = ["embeddings", *range(11)]
    values = [[1.0 + r + 0.3 * c for c in range(6)] for r in range(12)]
    values[3][0] = 5000.0  # a sink cell: layer 2, first token
    grid = {"rows": rows, "cols": ["What", " is", " a", " b", " c", "?"], "values": values}
    limits = robust_limits(grid)
    assert limits["vmax"] < 30 and limits["vmin"] == 1.0
    assert limits["clipped_count"] == 1
    assert limits["clipped"] == [{"row": 2, "col": "What", "value": 5000.0, "i": 3, "j": 0}]
    assert "layer 2 x 'What' = 5000" in clipped_text(limits)
    # The picture uses those limits, so the other cells spread over the colour map.
    low, high = _grid_png({**grid, "limits": limits}, "norms", tmp_path / "g.png")
    assert (low, high) == (limits["vmin"], limits["vmax"])
    assert (tmp_path / "g.png").stat().st_size > 1000
    # On a log scale 5000 next to 1..15 squeezes the rest's colours too little to clip...
    assert robust_limits(grid, log=True)["clipped_count"] == 0
    # ... 1e12 does: limits in log10, the outlier listed raw.
    values[3][0] = 1e12
    logged = robust_limits(grid, log=True)
    assert logged["vmax"] < 3 and logged["clipped"][0]["value"] == 1e12
    # Without an outlier nothing is clipped and the limits are the data's range.
    values[3][0] = 4.0
    plain = robust_limits(grid)
    assert plain["clipped_count"] == 0 and plain["vmax"] == max(max(r) for r in values)


def test_no_clipping_where_nothing_stands_out_enough() -> None:
    # A LoRA on two of nine modules: most cells 0 (IQR 0), the changed ones are the picture.
    change = [[0.04 if c in (2, 4) else 0.0 for c in range(9)] for _ in range(6)]
    grid = {"rows": list(range(6)), "cols": [f"m{c}" for c in range(9)], "values": change}
    limits = robust_limits(grid)
    assert limits["clipped_count"] == 0 and limits["vmax"] == 0.04
    # Norm vectors next to matrices: a second population 2x above, not an outlier to clip.
    norms = [[5.6 if c in (0, 5) else 1.0 + 0.1 * r + 0.05 * c for c in range(9)] for r in range(6)]
    assert robust_limits({**grid, "values": norms}, log=True)["clipped_count"] == 0


def test_cli_leads_with_what_changed_and_prints_a_handful_of_alarms(
    tmp_path: Path, capsys: Any
) -> None:
    from controller.apply.inspect import ScanOutcome
    from controller.cli.inspect import CLI_ALARMS, print_scan

    alarms = [
        {
            **_hit(0, d, "tok", 200.0),
            "severity": "warning",
            "kind": "massive_activation",
            "reason": f"massive activation: dim {d}",
            "hint": "compare",
            "layers": [0, 1, 2],
        }
        for d in range(8)
    ]
    result = {
        "kind": "full",
        "modules_changed": ["q_proj"],
        "changes": {
            "modules": [{"module": "q_proj", "relative_change": 0.04, "layers": 2}],
            "layers": [{"layer": 1, "relative_change": 0.01}],
            "neurons": [],
            "neurons_note": None,
        },
        "alarms": alarms,
        "context": [{"reason": "in the base too: dim 507 on token 'What'"}],
    }
    print_scan(ScanOutcome("scanned", "m@2", "m@1", result, tmp_path))
    out = capsys.readouterr().out
    assert out.index("what changed") < out.index("layers that changed most") < out.index("alarm")
    assert out.count("warning") == CLI_ALARMS == 5
    assert "3 more alarm(s)" in out and "in the base too (context, not alarms): 1" in out
