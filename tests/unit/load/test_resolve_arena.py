"""Resolution of Arena specs, an experiment's `inspect` section and a pipeline's arena step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from controller.api.pipeline import PipelineSpec
from controller.load.desired import load_desired
from controller.loop.run import Steps

ARENA = """
apiVersion: llmops/v1
kind: Arena
metadata: {name: duel}
spec:
  models: [base, assistant@champion]
  prompts: {type: file, path: data/eval.jsonl}
  judge: {model: base, rubric: "Prefer correct answers."}
"""


def test_an_arena_orders_after_its_models_and_digests_its_prompts(
    make_repo: Callable[..., Path],
) -> None:
    root = make_repo({"specs/arenas/duel.yaml": ARENA})
    loaded = load_desired(root)
    assert loaded.ok, [d.render() for d in loaded.diagnostics]
    assert loaded.desired is not None
    arena = loaded.desired.resources["Arena/duel"]
    # The base model without @ is a digest input; the alias is observed, not digested.
    assert "Model/base" in arena.inputs and "file:data/eval.jsonl" in arena.inputs
    assert not any(k.startswith("Experiment/") for k in arena.inputs)
    waves = loaded.desired.waves
    assert waves["Arena/duel"] > waves["Experiment/exp/default"]


def test_an_arena_with_unknown_models_or_prompts_is_located(
    make_repo: Callable[..., Path],
) -> None:
    text = ARENA.replace("[base, assistant@champion]", "[base, nobody]").replace(
        "data/eval.jsonl", "data/missing.jsonl"
    )
    root = make_repo({"specs/arenas/duel.yaml": text})
    found = {(d.path, d.message) for d in load_desired(root).diagnostics}
    assert ("spec.models[1]", "unknown model 'nobody'") in found
    assert ("spec.prompts.path", "'data/missing.jsonl' does not exist") in found


def test_asking_for_a_scan_changes_no_digest(make_repo: Callable[..., Path]) -> None:
    root = make_repo()
    before = load_desired(root).desired
    spec = root / "specs/experiments/exp.yaml"
    (root / "data/probes.txt").write_text("How do I reset my password?\n")
    spec.write_text(spec.read_text() + "  inspect: {probes: data/probes.txt}\n")
    after = load_desired(root).desired
    assert before is not None and after is not None
    run = "Experiment/exp/default"
    assert after.resources[run].digest == before.resources[run].digest
    assert after.resources[run].spec.inspect.probes == "data/probes.txt"
    assert "inspect" not in before.resources[run].fields
    spec.write_text(spec.read_text().replace("data/probes.txt", "data/nope.txt"))
    found = {(d.path, d.message) for d in load_desired(root).diagnostics}
    assert ("spec.inspect.probes", "'data/nope.txt' does not exist") in found


def test_a_pipeline_arena_step_names_an_arena() -> None:
    spec = {
        "trigger": {"min_new_rows": 1},
        "steps": [
            {"step": "update_dataset", "dataset": "faq"},
            {"step": "retrain", "experiment": "exp"},
            {"step": "regression_test", "suite": "suite", "against": "assistant"},
            {"step": "arena", "arena": "duel"},
            {"step": "open_pull_request", "deployment": "assistant"},
        ],
    }
    assert Steps.of("loop", PipelineSpec.model_validate(spec)).arena == "duel"
    spec["steps"].pop(3)
    assert Steps.of("loop", PipelineSpec.model_validate(spec)).arena is None
