"""Reference-guided judging: the judge prompt carries the reference, the metric judge scores
answers against it with a tie band, and the Arena spec refuses judges it cannot run."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from controller.api.arena import ArenaJudge, ArenaSpec, MetricJudge
from runners.arena.judge import (
    PAIRWISE_PROMPT,
    Reference,
    judge_battle,
    judge_prompt,
)
from runners.arena.judge import (
    MetricJudge as MetricJudgeRunner,
)
from runners.errors import InvalidInput

REFERENCE = Reference("The Team plan billed annually costs $8 per user per month.", ("$8",))


def test_the_judge_prompt_shows_the_reference_only_when_there_is_one() -> None:
    guided = judge_prompt("R", "Q?", "ONE", "TWO", REFERENCE)
    assert "[The Start of Reference Answer]\n" + str(REFERENCE.answer) in guided
    assert guided.index("Reference Answer") < guided.index("ONE") < guided.index("TWO")
    assert "[[A]]" in guided and "[[D]]" in guided
    plain = judge_prompt("R", "Q?", "ONE", "TWO")
    assert plain == PAIRWISE_PROMPT.format(rubric="R", question="Q?", first="ONE", second="TWO")
    assert "Reference" not in plain
    assert judge_prompt("R", "Q?", "ONE", "TWO", Reference(None, ("$8",))) == plain


KNOWS = "The Team plan costs $8 per user per month when billed annually."
GUESSES = "Please contact our sales team for pricing."


@pytest.mark.parametrize("metric", ["rouge_l", "token_f1", "keyword_recall"])
def test_a_metric_judge_prefers_the_answer_that_matches_the_reference(metric: str) -> None:
    judge = MetricJudgeRunner(metric, tie_band=0.05)
    battle = judge_battle(judge, "Price?", KNOWS, GUESSES, reference=REFERENCE)
    assert battle.winner == "model_a"
    assert [v["verdict"] for v in battle.verdicts] == ["A", "B"]  # both orders agree
    assert battle.verdicts[0]["raw"].startswith(metric)
    assert judge_battle(judge, "Price?", GUESSES, KNOWS, reference=REFERENCE).winner == "model_b"


def test_the_tie_band_and_both_bad() -> None:
    judge = MetricJudgeRunner("keyword_recall", tie_band=0.0)
    assert judge_battle(judge, "q", KNOWS, KNOWS, reference=REFERENCE).winner == "tie"
    assert judge_battle(judge, "q", GUESSES, "No.", reference=REFERENCE).winner == "tie (bothbad)"
    wide = MetricJudgeRunner("rouge_l", tie_band=0.99)
    assert judge_battle(wide, "q", KNOWS, GUESSES, reference=REFERENCE).winner == "tie"


def test_a_metric_judge_without_its_reference_is_a_user_error() -> None:
    with pytest.raises(InvalidInput, match="prompts.reference"):
        MetricJudgeRunner("rouge_l").verdict("q", "a", "b")
    with pytest.raises(InvalidInput, match="prompts.keywords"):
        MetricJudgeRunner("keyword_recall").verdict("q", "a", "b", Reference("answer", ()))
    with pytest.raises(InvalidInput, match="not one of"):
        MetricJudgeRunner("bleu")


ENDPOINT: dict[str, Any] = {
    "type": "endpoint",
    "base_url": "https://api.example.com/v1",
    "model": "big",
    "api_key": {"env": "LLMOPS_KEY_JUDGE"},
    "rubric": "r",
}
BASE: dict[str, Any] = {
    "models": ["a", "b"],
    "prompts": {"type": "file", "path": "data/eval.jsonl", "reference": "answer"},
}


def spec(**changes: Any) -> ArenaSpec:
    return ArenaSpec.model_validate({**BASE, **changes})


def test_judge_types_parse() -> None:
    model = spec(judge={"model": "j", "rubric": "r"}).judge
    assert isinstance(model, ArenaJudge) and model.type == "model"
    metric = spec(judge={"type": "metric", "metric": "rouge_l"}).judge
    assert isinstance(metric, MetricJudge) and metric.tie_band == 0.05
    gated = spec(
        judge={"type": "metric", "metric": "rouge_l", "require_agreement": {"min_kappa": 0.4}},
        human_votes=True,
    ).judge
    assert gated is not None and gated.require_agreement is not None
    assert gated.require_agreement.min_shared == 10
    endpoint = spec(judge=ENDPOINT).judge
    assert endpoint is not None and endpoint.type == "endpoint" and endpoint.retries == 4


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {
                "prompts": {"type": "file", "path": "x.jsonl"},
                "judge": {"type": "metric", "metric": "rouge_l"},
            },
            "set 'prompts.reference'",
        ),
        (
            {"judge": {"type": "metric", "metric": "keyword_recall"}},
            "set 'prompts.keywords'",
        ),
        ({"judge": {"type": "metric", "metric": "bleu"}}, "'rouge_l', 'token_f1' or"),
        ({"judge": {"type": "metric", "metric": "rouge_l", "tie_band": 1.0}}, "tie_band"),
        ({"judge": {"type": "metric", "metric": "rouge_l", "model": "j"}}, "model"),
        ({"judge": {"type": "metric"}}, "metric"),
        (
            {"judge": {"model": "j", "rubric": "r", "require_agreement": {"min_kappa": 0.4}}},
            "needs 'human_votes: true'",
        ),
        (
            {"judge": {**ENDPOINT, "api_key": {"env": "GITHUB_TOKEN"}}},
            "GITHUB_TOKEN, which is not a key variable",
        ),
        ({"judge": {**ENDPOINT, "base_url": "ftp://x"}}, "base_url"),
        ({"judge": {**ENDPOINT, "api_key": {"value": "sk-1"}}}, "value"),
        (
            {
                "judge": {"model": "j", "rubric": "r", "require_agreement": {"min_shared": 3}},
                "human_votes": True,
            },
            "give 'min_kappa', 'min_percent' or both",
        ),
        (
            {
                "judge": {"model": "j", "rubric": "r", "require_agreement": {"min_kappa": 2}},
                "human_votes": True,
            },
            "min_kappa",
        ),
    ],
)
def test_spec_validation_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(**changes)
