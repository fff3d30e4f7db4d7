"""Judge quality where people read it: the shared wording (CLI, dashboard, report) and the
pull-request report's arena section, a hostile judge name escaped."""

from __future__ import annotations

from controller.observe.leaderboard import judge_lines
from controller.plan.types import Plan
from controller.report.markdown import ReportInputs, render_report
from controller.state.lockfile import JudgeQuality, LockEntry, LockFile

QUALITY = JudgeQuality(
    judge="metric:rouge_l",
    both_orders=10,
    position_bias=0.2,
    shared=8,
    agreement=0.75,
    agreement_interval=(0.5, 1.0),
    kappa=0.6,
    kappa_interval=(0.21, 1.0),
    counted=False,
    detail="judge votes not counted: Cohen's kappa 0.60 is below 0.70",
)


def test_judge_lines_say_bias_agreement_and_whether_votes_count() -> None:
    lines = judge_lines(QUALITY)
    assert lines == [
        "Judge metric:rouge_l: position bias 20% (verdict flips with the answer order in 2 "
        "of 10 battle(s)).",
        "Agreement with people on 8 shared vote(s): 75% [50%, 100%], Cohen's kappa 0.60 "
        "[0.21, 1.00] (95% bootstrap intervals).",
        "Judge votes not counted: Cohen's kappa 0.60 is below 0.70.",
    ]
    alone = JudgeQuality(judge="j@1")
    assert judge_lines(alone) == [
        "Judge j@1: position bias unmeasured (no battle has a verdict in both orders).",
        "Agreement with people: no battle has both a judge and a human vote yet.",
    ]
    assert judge_lines(None) == []


def test_the_report_shows_the_judge_escaped() -> None:
    address = "Arena/duel"
    outputs = {
        "models": {"a": "a@1", "b": "b@1"},
        "battles": 4,
        "votes": {"judge": 4},
        "decided": 4,
        "leaderboard": [
            {"model": "a@1", "rating": 1100, "lower": 1050, "upper": 1150, "rank": 1, "battles": 4},
            {"model": "b@1", "rating": 900, "lower": 850, "upper": 950, "rank": 2, "battles": 4},
        ],
        "judge": {**QUALITY.model_dump(mode="json"), "judge": "j|`<b>x</b>`@1"},
    }
    head = LockFile(
        resources={
            address: LockEntry.model_validate(
                {"kind": "Arena", "digest": "sha256:a", "outputs": outputs}
            )
        }
    )
    text = render_report(
        ReportInputs(
            base="main",
            head="head",
            plan=Plan(()),
            base_lock=LockFile(),
            head_lock=head,
            desired={address: "sha256:a"},
        )
    )
    line = next(x for x in text.splitlines() if "position bias" in x)
    assert "Judge j\\|\\`&lt;b>x&lt;/b>\\`@1: position bias 20%" in line, line
    assert "Cohen's kappa 0.60 [0.21, 1.00]" in line and "Judge votes not counted" in line
