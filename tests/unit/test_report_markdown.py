"""The pull-request report renders the same Markdown from the same inputs (golden file);
an evaluation not yet run on the proposed specs is pending and never reported as passed."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from controller.plan.address import Address
from controller.plan.types import Action, ActionKind, Plan
from controller.report.markdown import (
    Curve,
    DesiredEvaluation,
    ReportInputs,
    gate_outcomes,
    headline,
    pending_evaluations,
    render_report,
    sparkline,
)
from controller.state.lockfile import LockEntry

GOLDEN = Path(__file__).parents[1] / "golden" / "report"


def entries(raw: dict[str, dict[str, Any]]) -> dict[str, LockEntry]:
    """Lock entries from address -> {digest, outputs}, outputs typed by the address's kind."""
    return {
        address: LockEntry.model_validate({"kind": Address.parse(address).kind, **fields})
        for address, fields in raw.items()
    }


def row(metric: str, baseline: float, candidate: float, low: float, high: float) -> dict:
    return {
        "metric": metric,
        "baseline": baseline,
        "candidate": candidate,
        "difference": round(candidate - baseline, 6),
        "low": low,
        "high": high,
        "p_value": 0.01,
        "higher_is_better": not metric.endswith("perplexity"),
        "candidate_low": candidate - 0.01,
        "candidate_high": candidate + 0.01,
    }


BASE_LOCK = entries(
    {
        "Dataset/support-faq": {
            "digest": "sha256:d1",
            "outputs": {"version": "sha256:" + "a" * 64, "rows": {"train": 300, "validation": 30}},
        },
        "Experiment/support-lora/default": {
            "digest": "sha256:e1",
            "outputs": {"version": "support-assistant@1", "metrics": {"final_loss": 3.6}},
        },
        "Evaluation/support-lora/default": {
            "digest": "sha256:v1",
            "outputs": {
                "subject": "support-assistant@1",
                "suite": "support-regression",
                "metrics": {"faq-answers/rouge_l": 0.15, "faq-perplexity/perplexity": 110.0},
            },
        },
        "Deployment/support-assistant": {
            "digest": "sha256:p1",
            "outputs": {"version": "support-assistant@1", "target": "local"},
        },
        "Evaluation/support-lora/lr-high": {
            "digest": "sha256:w1",
            "outputs": {
                "subject": "support-assistant@1",
                "suite": "support-regression",
                "gates": {"faq-answers/rouge_l max_drop 0.02": {"passed": True, "detail": "older"}},
            },
        },
    }
)

HEAD_LOCK = entries(
    {
        "Dataset/support-faq": {
            "digest": "sha256:d2",
            "outputs": {
                "version": "sha256:" + "b" * 64,
                "rows": {"train": 311, "validation": 33},
                "removed": {"dedup": 4, "decontaminate": 1},
            },
        },
        "Experiment/support-lora/default": {
            "digest": "sha256:e2",
            "outputs": {
                "version": "support-assistant@2",
                "metrics": {"final_loss": 3.21, "final_eval_loss": 3.468, "steps": 39},
            },
        },
        "Evaluation/support-lora/default": {
            "digest": "sha256:v2",
            "outputs": {
                "subject": "support-assistant@2",
                "suite": "support-regression",
                "baseline": "smollm2-135m-instruct@1",
                "metrics": {"faq-answers/rouge_l": 0.156, "faq-perplexity/perplexity": 109.1},
                "comparison": [
                    row("faq-answers/rouge_l", 0.109, 0.156, 0.028, 0.066),
                    row("faq-perplexity/perplexity", 121.9, 109.1, -15.2, -10.1),
                ],
                "gates": {
                    "faq-answers/rouge_l max_drop 0.02": {
                        "passed": True,
                        "detail": "change +0.047 (drop -0.047) vs allowed 0.02",
                    },
                    "faq-perplexity/perplexity max 100": {
                        "passed": False,
                        "detail": "upper bound 112 vs max 100",
                    },
                },
            },
        },
        "Model/support-assistant": {
            "digest": "sha256:m2",
            "outputs": {"version": "support-assistant@2", "aliases": ["champion"]},
        },
        # An older result of the lr-high run's evaluation: not one of the proposed specs.
        "Evaluation/support-lora/lr-high": {
            "digest": "sha256:w1",
            "outputs": {
                "subject": "support-assistant@1",
                "suite": "support-regression",
                "gates": {"faq-answers/rouge_l max_drop 0.02": {"passed": True, "detail": "older"}},
            },
        },
    }
)

GATES = ("faq-answers/rouge_l max_drop 0.02", "faq-perplexity/perplexity max 100")
EVALUATIONS = {
    "Evaluation/support-lora/default": DesiredEvaluation(
        "support-regression", "Experiment/support-lora/default", GATES
    ),
    "Evaluation/support-lora/lr-high": DesiredEvaluation(
        "support-regression", "Experiment/support-lora/lr-high", GATES
    ),
}

DESIRED = {
    "Dataset/support-faq": "sha256:d2",
    "Experiment/support-lora/default": "sha256:e2",
    "Experiment/support-lora/lr-high": "sha256:e3",
    "Evaluation/support-lora/default": "sha256:v2",
    "Evaluation/support-lora/lr-high": "sha256:w2",
    "Model/support-assistant": "sha256:m2",
    "Deployment/support-assistant": "sha256:p2",
}


def action(kind: ActionKind, address: str, reason: str) -> Action:
    return Action(kind, address, Address.parse(address).kind, "x", None, "sha256:x", reason, 0)


def inputs() -> ReportInputs:
    plan = Plan(
        (
            action(ActionKind.UPDATE, "Dataset/support-faq", "input file data/faq.jsonl changed"),
            action(
                ActionKind.RETRAIN,
                "Experiment/support-lora/default",
                "spec training.learning_rate: 0.0002 -> 0.0003",
            ),
            action(ActionKind.CREATE, "Experiment/support-lora/lr-high", "new | variant"),
            action(ActionKind.REEVALUATE, "Evaluation/support-lora/default", "subject changed"),
            action(ActionKind.REEVALUATE, "Evaluation/support-lora/lr-high", "subject changed"),
            action(ActionKind.CREATE, "Model/support-assistant", "new"),
            Action(
                ActionKind.DEPLOY,
                "Deployment/support-assistant",
                "Deployment",
                "deploy",
                "sha256:p1",
                "sha256:p2",
                "spec kserve.canary_traffic_percent: 10 -> 25",
                0,
                changes=("spec kserve.canary_traffic_percent: 10 -> 25",),
            ),
            action(ActionKind.NOOP, "Model/smollm2-135m-instruct", ""),
        )
    )
    return ReportInputs(
        base="origin/main",
        head="abc1234",
        plan=plan,
        base_lock=BASE_LOCK,
        head_lock=HEAD_LOCK,
        desired=DESIRED,
        curves={
            "Experiment/support-lora/default": Curve(
                [4.1, 3.9, 3.7, 3.6, 3.5, 3.4, 3.3, 3.21],
                "report-assets/experiment-support-lora-default.png",
                "sha256:" + "c" * 64,
            )
        },
        dataset_diffs={"Dataset/support-faq": {"added": 12, "removed": 1, "changed": 2}},
        deployments={"Deployment/support-assistant": "support-assistant@champion"},
        manifest_diffs={
            "Deployment/support-assistant": "--- base\n+++ this branch\n@@ -1,2 +1,2 @@\n"
            "-    canaryTrafficPercent: 10\n+    canaryTrafficPercent: 25\n"
        },
        evaluations=EVALUATIONS,
    )


def test_report_matches_golden_file() -> None:
    text = render_report(inputs())
    golden = GOLDEN / "pull_request.md"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_gates_are_read_from_applied_evaluations_only() -> None:
    given = inputs()
    outcomes = gate_outcomes(given)
    assert [(g.evaluation, g.name, g.passed) for g in outcomes] == [
        ("Evaluation/support-lora/default", "faq-answers/rouge_l max_drop 0.02", True),
        ("Evaluation/support-lora/default", "faq-perplexity/perplexity max 100", False),
        # lr-high's lock entry is an older result: its gates are pending, not passed.
        ("Evaluation/support-lora/lr-high", "faq-answers/rouge_l max_drop 0.02", None),
        ("Evaluation/support-lora/lr-high", "faq-perplexity/perplexity max 100", None),
    ]
    assert headline(given) == (
        "❌ 1 of 2 gate(s) failed; ⏳ 1 evaluation(s) pending: 2 gate(s) not yet decided"
    )
    given.desired = {**DESIRED, "Evaluation/support-lora/default": "sha256:other"}
    assert [g.passed for g in gate_outcomes(given)] == [None] * 4


def test_pending_evaluation_is_never_reported_as_passed() -> None:
    """The learning-rate-only pull request: the base's evaluation passed every gate, the
    branch has not been applied, so its gates are pending and nothing says "passed"."""
    passed = {"passed": True, "detail": "change +0.01 vs allowed 0.02"}
    old = entries(
        {
            "Evaluation/support-lora/default": {
                "digest": "sha256:v1",
                "outputs": {
                    "subject": "support-assistant@1",
                    "suite": "support-regression",
                    "gates": dict.fromkeys(GATES, passed),
                },
            }
        }
    )
    given = ReportInputs(
        base="main",
        head="abc1234",
        plan=Plan(
            (action(ActionKind.REEVALUATE, "Evaluation/support-lora/default", "run changed"),)
        ),
        base_lock=old,
        head_lock=old,
        desired={"Evaluation/support-lora/default": "sha256:v2"},
        evaluations={
            "Evaluation/support-lora/default": EVALUATIONS["Evaluation/support-lora/default"]
        },
    )
    assert pending_evaluations(given) == ["Evaluation/support-lora/default"]
    text = render_report(given)
    assert "**⏳ 1 evaluation(s) pending: 2 gate(s) not yet decided**" in text
    assert "passed" not in text and "✅" not in text
    assert "| faq-perplexity/perplexity max 100 | ⏳ pending |" in text

    applied = dataclasses.replace(
        given, desired={"Evaluation/support-lora/default": "sha256:v1"}
    )  # the same digest as the base: the base's result is the proposed specs' result
    assert headline(applied) == "✅ all 2 gate(s) passed"


def test_a_pending_control_decides_no_gates() -> None:
    given = ReportInputs(
        base="main",
        head="abc1234",
        plan=Plan((action(ActionKind.CREATE, "Evaluation/support-lora/control", "new"),)),
        base_lock={},
        head_lock={},
        desired={"Evaluation/support-lora/control": "sha256:c1"},
        evaluations={
            "Evaluation/support-lora/control": DesiredEvaluation(
                "support-regression", "model:smollm2-135m-instruct"
            )
        },
    )
    assert headline(given) == "⏳ 1 evaluation(s) pending: 0 gate(s) not yet decided"
    assert "with suite `support-regression`; it decides no gates." in render_report(given)


def test_sparkline_spans_low_to_high() -> None:
    assert sparkline([3.0, 2.0, 1.0]) == "█▄▁"
    assert len(sparkline([float(i) for i in range(100)])) == 24
    assert sparkline([]) == ""


def test_desired_evaluations_name_the_gates_their_suite_will_decide() -> None:
    """Gate names come from the suite's rules, as apply records them; the control (what the
    runs are compared with) decides none."""
    from controller.load.desired import load_desired
    from controller.report.inputs import desired_evaluations
    from tests.conftest import PROJECT_ROOT

    loaded = load_desired(PROJECT_ROOT)
    assert loaded.desired is not None
    planned = desired_evaluations(loaded.desired)
    assert planned["Evaluation/support-finetune/control"].gates == ()
    default = planned["Evaluation/support-finetune/default"]
    assert (default.suite, default.subject) == (
        "support-regression",
        "Experiment/support-finetune/default",
    )
    assert default.gates == (
        "faq-answers/rouge_l max_drop 0.02",
        "faq-perplexity/perplexity max_drop 5",
        "faq-choice/accuracy non_inferiority_margin 0.1",
    )
