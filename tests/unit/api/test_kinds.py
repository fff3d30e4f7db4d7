"""Every kind: a valid example validates; unknown fields and bad values are rejected."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from controller.api import KINDS, Arena, Dataset, Deployment, EvalSuite, Experiment, Model, Pipeline
from controller.api.common import split_ref

VALID: dict[str, dict[str, Any]] = {
    "Model": {
        "source": {
            "type": "hub",
            "repo": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "revision": "a" * 40,
        },
        "license": "apache-2.0",
    },
    "Dataset": {
        "format": "chat",
        "sources": [{"type": "file", "path": "data/chat.jsonl", "mapping": {"messages": "conv"}}],
        "steps": [{"step": "near_dedup", "threshold": 0.9}, {"step": "redact_pii"}],
        "splits": {"train": 0.8, "validation": 0.1, "test": 0.1},
    },
    "EvalSuite": {
        "tasks": [
            {
                "name": "mc",
                "type": "multiple_choice",
                "data": {"type": "file", "path": "data/mc.jsonl"},
                "metrics": ["accuracy"],
            }
        ],
        "gates": [{"metric": "mc/accuracy", "min": 0.5}],
    },
    "Experiment": {
        "base_model": "base@3",
        "dataset": "faq",
        "training": {"method": "full", "max_steps": 10},
        "variants": {"lr": {"training.learning_rate": 1e-3}},
    },
    "Deployment": {
        "model": "assistant@champion",
        "target": "kserve",
        "api_key": {"secret": "llm-keys/assistant"},
    },
    "Arena": {
        "models": ["base@1", "assistant@champion"],
        "prompts": {"type": "dataset", "dataset": "faq", "split": "test", "limit": 20},
        "judge": {"model": "judge", "rubric": "Prefer correct answers."},
        "gates": [{"candidate": "assistant@champion", "baseline": "base@1", "margin": -25}],
    },
    "Pipeline": {
        "trigger": {"schedule": "0 3 * * 1"},
        "steps": [
            {"step": "update_dataset", "dataset": "faq"},
            {"step": "retrain", "experiment": "exp"},
        ],
    },
}


def envelope(kind: str, spec: dict[str, Any], name: str = "thing") -> dict[str, Any]:
    return {"apiVersion": "llmops/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def test_every_kind_has_a_valid_example() -> None:
    assert set(VALID) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(VALID))
def test_valid_example(kind: str) -> None:
    resource = KINDS[kind].model_validate(envelope(kind, VALID[kind]))
    assert resource.metadata.name == "thing"
    assert resource.KIND == kind


@pytest.mark.parametrize("kind", sorted(VALID))
def test_unknown_spec_field_is_an_error(kind: str) -> None:
    with pytest.raises(ValidationError) as err:
        KINDS[kind].model_validate(envelope(kind, {**VALID[kind], "surprise": 1}))
    assert any(
        e["type"] == "extra_forbidden" and e["loc"][-1] == "surprise" for e in err.value.errors()
    )


@pytest.mark.parametrize("name", ["Upper", "under_score", "-lead", "x" * 64, ""])
def test_names_are_dns_style(name: str) -> None:
    with pytest.raises(ValidationError):
        Model.model_validate(envelope("Model", VALID["Model"], name=name))


def test_unknown_api_version() -> None:
    doc = envelope("Model", VALID["Model"]) | {"apiVersion": "llmops/v2"}
    with pytest.raises(ValidationError):
        Model.model_validate(doc)


def test_refs_split() -> None:
    assert split_ref("assistant@champion") == ("assistant", "champion")
    assert split_ref("base") == ("base", None)


def test_model_source_is_a_tagged_union() -> None:
    with pytest.raises(ValidationError) as err:
        Model.model_validate(envelope("Model", {"source": {"type": "ftp", "path": "x"}}))
    assert err.value.errors()[0]["type"] == "union_tag_invalid"


def test_hub_revision_must_be_pinned() -> None:
    spec = {"source": {"type": "hub", "repo": "a/b", "revision": "main"}}
    with pytest.raises(ValidationError):
        Model.model_validate(envelope("Model", spec))


def test_dataset_splits_must_sum_to_one() -> None:
    spec = {**VALID["Dataset"], "splits": {"train": 0.5, "validation": 0.1, "test": 0.1}}
    with pytest.raises(ValidationError, match="must be 1.0"):
        Dataset.model_validate(envelope("Dataset", spec))


def test_dataset_paths_are_relative() -> None:
    spec = {**VALID["Dataset"], "sources": [{"type": "file", "path": "/etc/passwd"}]}
    with pytest.raises(ValidationError, match="absolute paths"):
        Dataset.model_validate(envelope("Dataset", spec))


def test_augment_needs_a_model_for_paraphrase() -> None:
    spec = {**VALID["Dataset"], "steps": [{"step": "augment", "method": "paraphrase"}]}
    with pytest.raises(ValidationError, match="needs 'model'"):
        Dataset.model_validate(envelope("Dataset", spec))


def test_suite_gate_must_name_a_task_metric() -> None:
    spec = {**VALID["EvalSuite"], "gates": [{"metric": "mc/rouge_l", "min": 0.1}]}
    with pytest.raises(ValidationError, match="does not compute 'rouge_l'"):
        EvalSuite.model_validate(envelope("EvalSuite", spec))


def test_suite_gate_needs_a_rule() -> None:
    spec = {**VALID["EvalSuite"], "gates": [{"metric": "mc/accuracy"}]}
    with pytest.raises(ValidationError, match="at least one of"):
        EvalSuite.model_validate(envelope("EvalSuite", spec))


def test_judge_metric_needs_a_judge() -> None:
    task = {
        "name": "j",
        "type": "generate_until",
        "data": {"type": "file", "path": "d.jsonl"},
        "metrics": ["judge"],
    }
    with pytest.raises(ValidationError, match="needs a 'judge'"):
        EvalSuite.model_validate(envelope("EvalSuite", {"tasks": [task]}))


def test_experiment_default_run_name_is_reserved() -> None:
    spec = {**VALID["Experiment"], "variants": {"default": {}}}
    with pytest.raises(ValidationError, match="'default' is the spec as written"):
        Experiment.model_validate(envelope("Experiment", spec))


def test_experiment_control_is_one_of_model_or_run() -> None:
    spec = {**VALID["Experiment"], "control": {"model": "base", "run": "lr"}}
    with pytest.raises(ValidationError, match="exactly one"):
        Experiment.model_validate(envelope("Experiment", spec))


def test_deployment_secret_reference_not_value() -> None:
    spec = {**VALID["Deployment"], "api_key": "sk-abc"}
    with pytest.raises(ValidationError):
        Deployment.model_validate(envelope("Deployment", spec))


def test_deployment_collect_needs_a_store() -> None:
    spec = {**VALID["Deployment"], "collect": {"enabled": True}}
    with pytest.raises(ValidationError, match="needs 'into'"):
        Deployment.model_validate(envelope("Deployment", spec))


def test_kserve_replicas_ordered() -> None:
    spec = {**VALID["Deployment"], "kserve": {"min_replicas": 3, "max_replicas": 1}}
    with pytest.raises(ValidationError, match="max_replicas"):
        Deployment.model_validate(envelope("Deployment", spec))


def test_pipeline_trigger_needs_a_condition() -> None:
    spec = {**VALID["Pipeline"], "trigger": {}}
    with pytest.raises(ValidationError, match="trigger needs"):
        Pipeline.model_validate(envelope("Pipeline", spec))


def test_arena_needs_voters_distinct_models_and_gates_on_its_models() -> None:
    base = VALID["Arena"]
    with pytest.raises(ValidationError, match="a 'judge', 'human_votes: true', or both"):
        Arena.model_validate(envelope("Arena", {**base, "judge": None}))
    with pytest.raises(ValidationError, match="names a@1 twice"):
        Arena.model_validate(envelope("Arena", {**base, "models": ["a@1", "a@1"]}))
    with pytest.raises(ValidationError, match="which is not in 'models'"):
        gate = {"candidate": "other", "baseline": "base@1"}
        Arena.model_validate(envelope("Arena", {**base, "gates": [gate]}))
    with pytest.raises(ValidationError):
        Arena.model_validate(envelope("Arena", {**base, "models": ["only"]}))
