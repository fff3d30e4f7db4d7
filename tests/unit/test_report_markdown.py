"""The pull-request report renders the same Markdown from the same inputs (golden file)."""

from __future__ import annotations

import os
from pathlib import Path

from controller.plan.types import Action, ActionKind, Plan
from controller.report.markdown import Curve, ReportInputs, gate_outcomes, render_report, sparkline

GOLDEN = Path(__file__).parents[1] / "golden" / "report"

BASE_LOCK = {
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
}

HEAD_LOCK = {
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
                {
                    "metric": "faq-answers/rouge_l",
                    "baseline": 0.109,
                    "candidate": 0.156,
                    "difference": 0.047,
                    "low": 0.028,
                    "high": 0.066,
                },
                {
                    "metric": "faq-perplexity/perplexity",
                    "baseline": 121.9,
                    "candidate": 109.1,
                    "difference": -12.8,
                    "low": -15.2,
                    "high": -10.1,
                },
            ],
            "gates": {
                "faq-answers/rouge_l max_drop 0.02": "pass",
                "faq-perplexity/perplexity max 100": "fail",
            },
            "gate_details": {
                "faq-answers/rouge_l max_drop 0.02": "change +0.047 (drop -0.047) vs allowed 0.02",
                "faq-perplexity/perplexity max 100": "upper bound 112 vs max 100",
            },
        },
    },
    "Model/support-assistant": {
        "digest": "sha256:m2",
        "outputs": {"version": "support-assistant@2", "aliases": ["champion"]},
    },
}

DESIRED = {
    "Dataset/support-faq": "sha256:d2",
    "Experiment/support-lora/default": "sha256:e2",
    "Experiment/support-lora/lr-high": "sha256:e3",
    "Evaluation/support-lora/default": "sha256:v2",
    "Model/support-assistant": "sha256:m2",
    "Deployment/support-assistant": "sha256:p2",
}


def action(kind: ActionKind, address: str, reason: str) -> Action:
    return Action(kind, address, address.split("/")[0], "x", None, "sha256:x", reason, 0)


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
    assert [(g.name, g.passed) for g in outcomes] == [
        ("faq-answers/rouge_l max_drop 0.02", True),
        ("faq-perplexity/perplexity max 100", False),
    ]
    given.desired = {**DESIRED, "Evaluation/support-lora/default": "sha256:other"}
    assert gate_outcomes(given) == []  # the lock holds an older result: not this branch's


def test_sparkline_spans_low_to_high() -> None:
    assert sparkline([3.0, 2.0, 1.0]) == "█▄▁"
    assert len(sparkline([float(i) for i in range(100)])) == 24
    assert sparkline([]) == ""
