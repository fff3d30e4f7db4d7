"""Experiment composition with hydra: defaults lists, interpolation, overrides, variants, sweeps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from controller.load.compose import parse_overrides, sweep_run_name
from controller.load.desired import load_desired

PRESET = """
method: lora
learning_rate: 1.0e-4
batch_size: 4
max_seq_len: 128
"""


def runs_of(root: Path, overrides: list[str] | None = None) -> dict[str, dict]:
    loaded = load_desired(root, overrides=overrides)
    assert loaded.ok, [d.render() for d in loaded.diagnostics]
    return {r.name: r.config for r in loaded.runs["exp"]}


def test_spec_as_written_is_the_default_run_and_variants_override(
    make_repo: Callable[..., Path],
) -> None:
    runs = runs_of(make_repo())
    assert set(runs) == {"default", "r16"}
    assert runs["default"]["training"]["lora"]["r"] == 8
    assert runs["r16"]["training"]["lora"]["r"] == 16
    assert runs["r16"]["training"]["learning_rate"] == runs["default"]["training"]["learning_rate"]


def test_defaults_list_takes_presets_and_spec_wins(make_repo: Callable[..., Path]) -> None:
    root = make_repo(
        {
            "specs/experiments/_presets/training/small.yaml": PRESET,
            "specs/experiments/exp.yaml": """
            apiVersion: llmops/v1
            kind: Experiment
            metadata: {name: exp}
            spec:
              defaults: [{training: small}]
              base_model: base
              dataset: faq
              register_as: assistant
              training: {learning_rate: 3.0e-4}
            """,
        }
    )
    run = runs_of(root)["default"]
    assert run["training"]["batch_size"] == 4
    assert run["training"]["max_seq_len"] == 128
    assert run["training"]["learning_rate"] == 3.0e-4


def test_missing_preset_is_a_diagnostic_with_hint(make_repo: Callable[..., Path]) -> None:
    root = make_repo(
        {
            "specs/experiments/_presets/training/small.yaml": PRESET,
            "specs/experiments/exp.yaml": """
            apiVersion: llmops/v1
            kind: Experiment
            metadata: {name: exp}
            spec:
              defaults: [{training: smal}]
              base_model: base
              dataset: faq
              register_as: assistant
            """,
        }
    )
    loaded = load_desired(root)
    assert not loaded.ok
    d = loaded.diagnostics[0]
    assert d.file == "specs/experiments/exp.yaml" and d.line == 5
    assert "preset 'training/smal' not found" in d.message
    assert d.hint == "did you mean 'small'?"


def test_interpolation_is_resolved(make_repo: Callable[..., Path]) -> None:
    root = make_repo(
        {
            "specs/experiments/exp.yaml": """
            apiVersion: llmops/v1
            kind: Experiment
            metadata: {name: exp}
            spec:
              base_model: base
              dataset: faq
              register_as: assistant
              training:
                max_steps: 40
                checkpoint_interval: ${training.max_steps}
            """,
        }
    )
    assert runs_of(root)["default"]["training"]["checkpoint_interval"] == 40


def test_command_line_overrides_apply_to_all_or_one(make_repo: Callable[..., Path]) -> None:
    root = make_repo()
    everywhere = runs_of(root, ["training.learning_rate=1e-4"])
    assert {r["training"]["learning_rate"] for r in everywhere.values()} == {1e-4}
    only_exp = runs_of(root, ["exp:training.seed=7"])
    assert only_exp["default"]["training"]["seed"] == 7
    untouched = runs_of(root, ["other:training.seed=7"])
    assert untouched["default"]["training"]["seed"] == 0


def test_misspelt_override_names_the_command_line(make_repo: Callable[..., Path]) -> None:
    loaded = load_desired(make_repo(), overrides=["training.learning_rat=1e-4"])
    assert not loaded.ok
    d = loaded.diagnostics[0]
    assert d.file == "<command line>"
    assert d.hint == "did you mean 'learning_rate'?"
    assert len(loaded.diagnostics) == 1  # reported once, not once per run


def test_misspelt_variant_key_points_at_the_variant(make_repo: Callable[..., Path]) -> None:
    root = make_repo(
        {
            "specs/experiments/exp.yaml": """
            apiVersion: llmops/v1
            kind: Experiment
            metadata: {name: exp}
            spec:
              base_model: base
              dataset: faq
              register_as: assistant
              variants:
                fast:
                  training.learnig_rate: 1.0e-3
            """,
        }
    )
    loaded = load_desired(root)
    d = loaded.diagnostics[0]
    assert (d.line, d.path) == (10, "spec.variants.fast.training.learnig_rate")
    assert d.hint == "did you mean 'learning_rate'?"
    assert "(run 'fast')" in d.message


def test_sweep_expands_into_named_runs(make_repo: Callable[..., Path]) -> None:
    root = make_repo(
        {
            "specs/experiments/exp.yaml": """
            apiVersion: llmops/v1
            kind: Experiment
            metadata: {name: exp}
            spec:
              base_model: base
              dataset: faq
              register_as: assistant
              sweep:
                training.learning_rate: [1.0e-4, 3.0e-4]
                training.lora.r: [4, 8]
            """,
        }
    )
    runs = runs_of(root)
    assert len(runs) == 5
    lrs = sorted(
        (r["training"]["learning_rate"], r["training"]["lora"]["r"])
        for n, r in runs.items()
        if n.startswith("sweep-")
    )
    assert lrs == [(1e-4, 4), (1e-4, 8), (3e-4, 4), (3e-4, 8)]


def test_sweep_names_are_stable_and_valid() -> None:
    name = sweep_run_name({"training.learning_rate": 0.0001, "training.lora.r": 16})
    assert name == "sweep-learning-rate-0-0001-r-16"
    long = sweep_run_name({f"training.k{i}": "v" * 20 for i in range(5)})
    assert len(long) <= 63 and long.startswith("sweep-")


def test_override_parsing() -> None:
    parsed, problems = parse_overrides(["a.b=1", "exp:c=2", "x=1,2", "+y=3", "bad=["])
    assert [(o.experiment, o.key, o.value) for o in parsed] == [
        (None, "a.b", "1"),
        ("exp", "c", "2"),
    ]
    assert len(problems) == 3
    assert all(p.file == "<command line>" for p in problems)
