"""History, pure parts: PR numbers, lock-entry diffs, served versions, names, landings."""

from __future__ import annotations

from typing import Any

import pytest

from controller.history.changes import (
    FieldChange,
    HistoryError,
    Target,
    diff_entry,
    diff_fields,
    landings,
    match_resource,
    pr_number,
    served,
    unknown_message,
)


@pytest.mark.parametrize(
    ("subject", "number"),
    [
        ("Merge pull request #12 from team/retrain", 12),
        ("Serve version 3 (#9)", 9),
        ("Serve version 3 (#9)  ", 9),
        ('Revert "Serve version 3 (#9)" (#11)', 11),
        ('Revert "Serve version 3 (#9)"', None),
        ("Fix (#3) in the middle", None),
        ("Merge branch 'main' into team/retrain", None),
        ("Merge pull request from nowhere", None),
        ("Bump to #4", None),
    ],
)
def test_pr_number(subject: str, number: int | None) -> None:
    assert pr_number(subject) == number


def test_diff_fields_flattens_and_names_added_and_removed() -> None:
    before = {"spec": {"model": "a@1", "port": 8000, "tags": ["x"]}}
    after = {"spec": {"model": "a@2", "tags": ["x", "y"], "limits": {"max_tokens": 256}}}
    assert diff_fields(before, after) == [
        FieldChange("spec.limits.max_tokens", "created", after=256),
        FieldChange("spec.model", "changed", "a@1", "a@2"),
        FieldChange("spec.port", "deleted", before=8000),
        FieldChange("spec.tags", "changed", ["x"], ["x", "y"]),
    ]
    assert diff_fields(after, after) == []
    assert diff_fields(None, {"a": 1}) == [FieldChange("a", "created", after=1)]


def entry(digest: str, **outputs: Any) -> dict[str, Any]:
    return {
        "kind": "Experiment",
        "digest": digest,
        "code_version": "train-1",
        "inputs": {"file:data/faq.jsonl": "sha256:aa"},
        "spec": {"training": {"learning_rate": 2e-4}},
        "outputs": outputs,
    }


def test_diff_entry_is_none_when_nothing_changed() -> None:
    assert diff_entry("Experiment/x/default", entry("d1"), entry("d1")) is None
    assert diff_entry("Experiment/x/default", None, None) is None


def test_diff_entry_created_and_deleted() -> None:
    created = diff_entry("Experiment/x/default", None, entry("d1", version="m@1"))
    assert created is not None
    assert (created.change, created.digest_before, created.digest_after) == ("created", None, "d1")
    deleted = diff_entry("Experiment/x/default", entry("d1"), None)
    assert deleted is not None
    assert (deleted.change, deleted.digest_before, deleted.digest_after) == ("deleted", "d1", None)


def test_diff_entry_names_digest_runner_inputs_spec_and_outputs() -> None:
    before = entry("d1", version="m@1", metrics={"eval_loss": 3.61})
    after = entry("d2", version="m@2", metrics={"eval_loss": 3.46})
    after["code_version"] = "train-2"
    after["inputs"] = {"file:data/faq.jsonl": "sha256:bb"}
    after["spec"] = {"training": {"learning_rate": 3e-4}}
    diff = diff_entry("Experiment/x/default", before, after)
    assert diff is not None
    assert (diff.change, diff.digest_before, diff.digest_after) == ("changed", "d1", "d2")
    assert diff.code_version == ("train-1", "train-2")
    # Input keys are file paths with dots; they stay whole.
    assert diff.inputs == [FieldChange("file:data/faq.jsonl", "changed", "sha256:aa", "sha256:bb")]
    assert diff.spec == [FieldChange("training.learning_rate", "changed", 2e-4, 3e-4)]
    assert diff.outputs == [
        FieldChange("metrics.eval_loss", "changed", 3.61, 3.46),
        FieldChange("version", "changed", "m@1", "m@2"),
    ]


def test_diff_entry_outputs_only_keeps_the_digest_and_no_runner_change() -> None:
    diff = diff_entry("Experiment/x/default", entry("d1"), entry("d1", version="m@1"))
    assert diff is not None
    assert diff.digest_before == diff.digest_after == "d1"
    assert diff.code_version is None
    assert diff.outputs == [FieldChange("version", "created", after="m@1")]


LOCK: dict[str, dict[str, Any]] = {
    "Deployment/web": {"kind": "Deployment", "outputs": {"version": "assistant@3"}},
    "Deployment/new": {"kind": "Deployment", "outputs": {}},
    "Experiment/exp/default": {
        "kind": "Experiment",
        "outputs": {"version": "assistant@2", "metrics": {"eval_loss": 3.46}},
    },
    "Experiment/exp/lr-high": {
        "kind": "Experiment",
        "outputs": {"version": "assistant@3", "metrics": {"eval_loss": 3.41}},
    },
    "Evaluation/exp/lr-high": {
        "kind": "Evaluation",
        "outputs": {
            "subject": "assistant@3",
            "suite": "regression",
            "metrics": {"answers/rouge_l": 0.38},
            "gates": {"answers/rouge_l": {"passed": True}},
        },
    },
    "Evaluation/exp/default": {
        "kind": "Evaluation",
        "outputs": {"subject": "assistant@2", "suite": "regression", "metrics": {"x": 1.0}},
    },
}


def test_served_finds_the_runs_and_evaluations_of_the_served_version() -> None:
    found = served(LOCK, "Deployment/web")
    assert found is not None
    assert found.version == "assistant@3"
    assert [e.address for e in found.evidence] == [
        "Evaluation/exp/lr-high",
        "Experiment/exp/lr-high",
    ]
    evaluation = found.evidence[0]
    assert (evaluation.suite, evaluation.version) == ("regression", "assistant@3")
    assert evaluation.metrics == {"answers/rouge_l": 0.38}
    assert evaluation.gates == {"answers/rouge_l": "pass"}
    assert found.evidence[1].metrics == {"eval_loss": 3.41}


def test_served_is_none_without_a_recorded_version_or_for_other_kinds() -> None:
    assert served(LOCK, "Deployment/new") is None
    assert served(LOCK, "Deployment/missing") is None
    assert served(LOCK, "Experiment/exp/default") is None


KNOWN = {
    "Deployment/support-assistant",
    "Model/support-assistant",
    "Model/smollm2",
    "Experiment/exp",
    "Experiment/exp/default",
    "Evaluation/exp/default",
}


def test_match_resource() -> None:
    assert match_resource("Deployment/support-assistant", KNOWN) == "Deployment/support-assistant"
    assert match_resource("deployment/support-assistant", KNOWN) == "Deployment/support-assistant"
    assert match_resource("EVALSUITE/none", KNOWN) is None
    assert match_resource("smollm2", KNOWN) == "Model/smollm2"
    assert match_resource("evaluation/exp", KNOWN) == "Evaluation/exp"  # all its evaluations
    assert match_resource("Deployment/", KNOWN) is None
    assert match_resource("nothing", KNOWN) is None
    with pytest.raises(HistoryError, match="names several resources") as err:
        match_resource("support-assistant", KNOWN)
    assert "Deployment/support-assistant, Model/support-assistant" in str(err.value)
    with pytest.raises(HistoryError, match="give the kind"):
        match_resource("exp/default", KNOWN)


def test_unknown_message_suggests_the_closest() -> None:
    text = unknown_message("Deployment/support-asistant", KNOWN)
    assert "did you mean 'Deployment/support-assistant'?" in text
    assert "did you mean 'Model/smollm2'?" in unknown_message("smollm3", KNOWN)
    assert "'llmops plan' lists them" in unknown_message("zzz", KNOWN)


def test_target_documents() -> None:
    assert Target("Deployment/web").document == ("Deployment", "web")
    assert Target("Experiment/exp/lr-high").document == ("Experiment", "exp")
    assert Target("Evaluation/exp/control").document == ("Experiment", "exp")
    group = Target("Experiment/exp")
    assert group.tracks("Experiment/exp/default")
    assert not group.tracks("Experiment/exp2/default")
    assert not Target("Model/a").tracks("Model/ab")


def test_landings_place_branch_commits_with_the_merge_that_brought_them() -> None:
    # main: a - b - m1 - c - m2 ; branch 1: a - x - y (merged at m1);
    # branch 2: y - z (forked from branch 1, merged at m2): y landed with m1 already.
    parents = {
        "a": (),
        "b": ("a",),
        "x": ("a",),
        "y": ("x",),
        "m1": ("b", "y"),
        "c": ("m1",),
        "z": ("y",),
        "m2": ("c", "z"),
    }
    placed = landings(parents, "m2")
    assert placed == {
        "m2": "m2",
        "c": "c",
        "m1": "m1",
        "b": "b",
        "a": "a",
        "x": "m1",
        "y": "m1",
        "z": "m2",
    }
    # From a branch tip, its own commits are its line.
    assert landings(parents, "z")["x"] == "x"
