"""Preference training in the specs: objectives and their settings, unpaired rows, the
preference eval task; each bad value is a clear error naming the field."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from controller.api.dataset import CANONICAL_FIELDS as SPEC_FIELDS
from controller.api.evalsuite import EvalSuiteSpec, Task
from controller.api.experiment import Training
from controller.load.desired import load_desired
from runners.data import steps
from runners.data.readers import read_source
from runners.data.rows import CANONICAL_FIELDS, check_row
from runners.train.job import TrainError
from runners.train.options import TrainingOptions
from runners.train.preference import read_preference_rows, unpair


def error(**training: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        Training(**training)
    return str(caught.value)


def test_preference_objectives_have_working_defaults() -> None:
    for objective in ("dpo", "orpo", "kto"):
        spec = Training(objective=objective)
        opts = TrainingOptions.from_mapping(spec.model_dump(mode="json"))
        assert opts.prefers and opts.preference.beta == 0.1 and opts.preference.loss_type is None
    written = Training(objective="kto", preference={"beta": 0.5, "desirable_weight": 1.33})
    opts = TrainingOptions.from_mapping(written.model_dump(mode="json"))
    assert opts.preference.beta == 0.5 and opts.preference.desirable_weight == 1.33
    assert not TrainingOptions().prefers


def test_bad_preference_settings_are_clear_errors() -> None:
    assert "loss_type 'kto' is not a loss of objective 'dpo'; use one of sigmoid" in error(
        objective="dpo", preference={"loss_type": "kto"}
    )
    assert "apply to objectives dpo, orpo, kto, not 'sft'" in error(preference={"beta": 0.5})
    assert "desirable_weight and undesirable_weight weigh kto" in error(
        objective="dpo", preference={"undesirable_weight": 2.0}
    )
    assert "label_smoothing applies to objective 'dpo', not 'orpo'" in error(
        objective="orpo", preference={"label_smoothing": 0.1}
    )
    assert "greater than 0" in error(objective="dpo", preference={"beta": 0})
    assert "preference.beta" in error(objective="dpo", preference={"beta": -1})
    assert "set packing to false" in error(objective="dpo", packing=True)
    assert "QLoRA is available for sft and cpt" in error(objective="orpo", method="qlora")
    assert "early_stopping is not available" in error(objective="kto", early_stopping={})
    assert "Input should be 'sft', 'cpt', 'dpo', 'orpo' or 'kto'" in error(objective="ppo")
    assert "Extra inputs are not permitted" in error(objective="dpo", preference={"gamma": 1})


def test_unpaired_rows_are_a_dataset_format(tmp_path: Path) -> None:
    assert SPEC_FIELDS == CANONICAL_FIELDS
    assert CANONICAL_FIELDS["unpaired"] == ("prompt", "completion", "label")
    assert check_row({"prompt": "p", "completion": "c", "label": False}, "unpaired") is None
    source = tmp_path / "feedback.jsonl"
    source.write_text(
        json.dumps({"prompt": "p", "completion": "c", "label": True})
        + "\n"
        + json.dumps({"prompt": "p", "completion": "c", "label": "thumbs up"})
        + "\n"
        + json.dumps({"prompt": "p", "label": True})
        + "\n"
    )
    loaded = read_source(source, "data/feedback.jsonl", "unpaired", "auto", {})
    assert len(loaded.rows) == 1
    problems = [b.render() for b in loaded.bad]
    assert problems[0].startswith("data/feedback.jsonl:2: 'label' must be true")
    assert problems[1] == "data/feedback.jsonl:3: missing field completion"


def test_redaction_and_dedup_cover_preference_and_unpaired_columns() -> None:
    pairs = [
        {"prompt": "mail me", "chosen": "at ann@example.org", "rejected": "call 555-123-4567"},
        {"prompt": "mail me", "chosen": "at ann@example.org", "rejected": "call 555-123-4567"},
    ]
    deduped, details = steps.dedup(pairs)
    assert len(deduped) == 1 and details["duplicates"] == 1
    redacted, _ = steps.redact_pii(deduped, "preference", {})
    assert "ann@example.org" not in redacted[0]["chosen"]
    assert "555-123-4567" not in redacted[0]["rejected"]
    unpaired = [{"prompt": "hi", "completion": "I am at 10.1.2.3", "label": True}]
    redacted, _ = steps.redact_pii(unpaired, "unpaired", {})
    assert "10.1.2.3" not in redacted[0]["completion"] and redacted[0]["label"] is True


def test_training_rows_name_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "a"}) + "\n")
    with pytest.raises(TrainError, match=r"train\.jsonl:1: fields 'chosen' and 'rejected' are"):
        read_preference_rows(path, "preference")
    path.write_text("\n" + json.dumps({"prompt": 3, "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(TrainError, match=r"train\.jsonl:2: field 'prompt' must be a string"):
        read_preference_rows(path, "preference")


def test_kto_unpairs_pairs_into_a_seeded_mix() -> None:
    rows = [{"prompt": f"p{i}", "chosen": "good", "rejected": "bad"} for i in range(8)]
    mixed = unpair(rows, seed=0)
    assert mixed == unpair(rows, seed=0) and mixed != unpair(rows, seed=1)
    assert sorted(r["label"] for r in mixed) == [False] * 8 + [True] * 8
    assert all((r["completion"] == "good") == r["label"] for r in mixed)
    # Not all desirable rows first: KTO reads its rows in order.
    assert [r["label"] for r in mixed[:8]] != [True] * 8


def test_preference_eval_task_and_gates() -> None:
    task = Task(
        name="pairs",
        type="preference",
        data={"type": "file", "path": "data/pairs.jsonl"},
        metrics=["preference_accuracy", "logprob_margin"],
    )
    assert task.prompt == "{prompt}" and task.chosen == "chosen"
    suite = EvalSuiteSpec(tasks=[task], gates=[{"metric": "pairs/preference_accuracy", "min": 0.9}])
    assert suite.gates[0].min == 0.9
    with pytest.raises(ValidationError, match="type 'preference' computes"):
        Task(**{**task.model_dump(), "metrics": ["accuracy"]})
    with pytest.raises(ValidationError, match="need type 'preference'"):
        Task(
            name="gen",
            type="generate_until",
            data={"type": "file", "path": "data/pairs.jsonl"},
            metrics=["preference_accuracy"],
        )
    with pytest.raises(ValidationError, match="chosen"):
        Task(**{**task.model_dump(), "chosen": "a.b"})


def test_validate_names_a_dataset_of_the_wrong_format(make_repo: Callable[..., Path]) -> None:
    experiment = """
apiVersion: llmops/v1
kind: Experiment
metadata: {name: exp}
spec:
  base_model: base
  dataset: faq
  training:
    objective: dpo
    preference: {beta: 0.2}
  eval_suite: suite
  register_as: assistant
"""
    loaded = load_desired(make_repo({"specs/experiments/exp.yaml": experiment}))
    found = [(d.file, d.path, d.message) for d in loaded.diagnostics]
    assert (
        "specs/experiments/exp.yaml",
        "spec.training.objective",
        "objective 'dpo' trains on preference rows, but Dataset 'faq' has format 'instruction'",
    ) in found
    fixed = make_repo(
        {
            "specs/experiments/exp.yaml": experiment,
            "specs/datasets/faq.yaml": """
apiVersion: llmops/v1
kind: Dataset
metadata: {name: faq}
spec:
  format: preference
  sources:
    - {type: file, path: data/faq.jsonl}
""",
        }
    )
    assert not [d for d in load_desired(fixed).diagnostics if "objective" in d.message]
