"""Two-stage experiments: a run that starts from another run's result (SFT, then DPO) is
validated, ordered after it, and retrained when it changes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from controller.load.desired import load_desired

PAIRS = """
apiVersion: llmops/v1
kind: Dataset
metadata: {name: pairs}
spec:
  format: preference
  sources: [{type: file, path: data/pairs.jsonl}]
"""

TWO_STAGE = """
apiVersion: llmops/v1
kind: Experiment
metadata: {{name: exp}}
spec:
  base_model: base
  dataset: faq
  training: {{learning_rate: {lr}, merge: {merge}}}
  variants:
    dpo: {{start_from: {start}, dataset: pairs, training.objective: dpo,
           training.learning_rate: 5.0e-6}}
  register_as: assistant
"""


def repo(make_repo: Callable[..., Path], lr: str = "2.0e-4", merge: str = "true", **more: str):
    experiment = TWO_STAGE.format(lr=lr, merge=merge, start=more.pop("start", "default"))
    return make_repo(
        {
            "specs/datasets/pairs.yaml": PAIRS,
            "data/pairs.jsonl": '{"prompt": "p", "chosen": "a", "rejected": "b"}\n',
            "specs/experiments/exp.yaml": more.pop("experiment", experiment),
        }
    )


def problems(root: Path) -> list[tuple[int, str, str, str]]:
    return [(d.line, d.path, d.message, d.hint) for d in load_desired(root).diagnostics]


def test_the_second_stage_waits_for_the_first_and_digests_it(
    make_repo: Callable[..., Path],
) -> None:
    loaded = load_desired(repo(make_repo))
    assert loaded.ok, [d.render() for d in loaded.diagnostics]
    desired = loaded.desired
    assert desired is not None
    sft, dpo = desired.resources["Experiment/exp/default"], desired.resources["Experiment/exp/dpo"]
    assert "Experiment/exp/default" in dpo.inputs and "Experiment/exp/default" in dpo.depends_on
    assert desired.waves["Experiment/exp/default"] < desired.waves["Experiment/exp/dpo"]
    assert dpo.fields["start_from"] == "default"
    assert "start_from" not in sft.fields  # unset: not in the digest, old digests stay

    changed = load_desired(repo(make_repo, lr="3.0e-4")).desired
    assert changed is not None
    assert changed.resources["Experiment/exp/default"].digest != sft.digest
    assert changed.resources["Experiment/exp/dpo"].digest != dpo.digest
    assert changed.resources["Experiment/exp/dpo"].fields == dpo.fields  # only the input moved


def test_start_from_problems_are_named_where_written(make_repo: Callable[..., Path]) -> None:
    found = problems(repo(make_repo, start="sft"))
    assert found == [
        (
            9,
            "spec.variants.dpo.start_from",
            "start_from: experiment 'exp' has no run 'sft'",
            "runs: default, dpo",
        )
    ]
    ((_, _, message, hint),) = problems(repo(make_repo, start="dpo"))
    assert message == "run 'dpo' starts from itself"
    ((_, path, message, hint),) = problems(repo(make_repo, merge="false"))
    assert path == "spec.variants.dpo.start_from"
    assert "registers a LoRA adapter only; a run starts from full weights" in message
    assert hint == "set training.merge: true on run 'default' (or train it with method full)"


def test_a_different_base_model_and_a_cycle_are_refused(make_repo: Callable[..., Path]) -> None:
    other = """
apiVersion: llmops/v1
kind: Model
metadata: {name: other}
spec: {source: {type: local, path: data}}
"""
    experiment = TWO_STAGE.format(lr="2.0e-4", merge="true", start="default").replace(
        "5.0e-6}", "5.0e-6, base_model: other}"
    )
    root = repo(make_repo, experiment=experiment)
    (root / "specs/models/other.yaml").write_text(other)
    ((_, path, message, _),) = problems(root)
    assert path == "spec.variants.dpo.base_model"
    assert "trains base model 'base', but names base model 'other'" in message

    cycle = """
apiVersion: llmops/v1
kind: Experiment
metadata: {name: exp}
spec:
  base_model: base
  dataset: faq
  training: {method: full}
  variants:
    a: {start_from: b}
    b: {start_from: a}
  register_as: assistant
"""
    ((_, _, message, _),) = problems(repo(make_repo, experiment=cycle))
    assert message.startswith("dependency cycle: Experiment/exp/")
    assert "Experiment/exp/a" in message and "Experiment/exp/b" in message
