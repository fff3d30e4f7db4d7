"""Arena judge: verdict parsing, combining both orders, position bias cancelled."""

from __future__ import annotations

import pytest

from runners.arena.judge import PAIRWISE_PROMPT, combine, judge_battle, parse_verdict


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[A]]", "A"),
        ("My final verdict is [[B]] because it answers.", "B"),
        ("[[C]]", "tie"),
        ("[[D]] Neither answer is correct.", "both_bad"),
        ("[[ a ]]", "A"),
        ("[[tie]]", "tie"),
        ("Verdict: A", "A"),
        ("Final verdict - B.", "B"),
        ("verdict: tie\nBoth are fine.", "tie"),
        ("Verdict: both bad", "both_bad"),
        ("Verdict: [[A]]", "A"),
        ("[[A]] Verdict: A.", "A"),  # the same verdict twice is one verdict
        ("[[A]] or maybe [[B]]", None),  # two different verdicts: ambiguous
        ("[[A]]\nVerdict: B", None),
        ("Verdict: A tie", None),  # the letter does not end the phrase
        ("verdict: a close call", None),
        ("A is better than B", None),  # no verdict marker at all
        ("[[E]]", None),
        ("", None),
    ],
)
def test_parse_verdict(text: str, expected: str | None) -> None:
    assert parse_verdict(text) == expected


def test_prompt_has_the_fields_and_the_four_verdicts() -> None:
    text = PAIRWISE_PROMPT.format(rubric="R", question="Q", first="ONE", second="TWO")
    assert text.index("ONE") < text.index("TWO")
    for marker in ("[[A]]", "[[B]]", "[[C]]", "[[D]]"):
        assert marker in text


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("A", "B", "model_a"),  # a first and preferred; b first and a (second) preferred
        ("B", "A", "model_b"),
        ("A", "A", "tie"),  # always the first position: position bias cancels
        ("B", "B", "tie"),  # always the second position
        ("tie", "tie", "tie"),
        ("both_bad", "both_bad", "tie (bothbad)"),
        ("A", "tie", "tie"),
        ("both_bad", "tie", "tie"),
        ("both_bad", "A", "tie"),
        (None, "A", None),
        ("B", None, None),
        (None, None, None),
    ],
)
def test_combine(first: str | None, second: str | None, expected: str | None) -> None:
    assert combine(first, second) == expected  # type: ignore[arg-type]


class AlwaysFirst:
    """A judge with pure position bias: whatever it is shown first wins."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def verdict(self, question: str, first: str, second: str) -> tuple[str, str]:
        self.calls.append((first, second))
        return "A", "[[A]]"


class PrefersLonger:
    """An honest judge: the longer answer wins wherever it is shown."""

    def verdict(self, question: str, first: str, second: str) -> tuple[str | None, str]:
        if len(first) == len(second):
            return "tie", "[[C]]"
        return ("A", "[[A]]") if len(first) > len(second) else ("B", "[[B]]")


class Mumbles:
    def verdict(self, question: str, first: str, second: str) -> tuple[str | None, str]:
        raw = "hmm, hard to say" if first == "long answer" else "[[B]]"
        return parse_verdict(raw), raw


def test_a_position_biased_judge_yields_ties() -> None:
    judge = AlwaysFirst()
    battle = judge_battle(judge, "q", "long answer", "short")
    assert battle.winner == "tie"
    assert judge.calls == [("long answer", "short"), ("short", "long answer")]
    assert [v["order"] for v in battle.verdicts] == ["ab", "ba"]
    assert battle.unparseable == 0


def test_an_honest_judge_picks_the_same_model_in_both_orders() -> None:
    assert judge_battle(PrefersLonger(), "q", "long answer", "short").winner == "model_a"
    battle = judge_battle(PrefersLonger(), "q", "short", "long answer")
    assert battle.winner == "model_b"
    assert [v["verdict"] for v in battle.verdicts] == ["B", "A"]
    assert [v["raw"] for v in battle.verdicts] == ["[[B]]", "[[A]]"]
    assert judge_battle(PrefersLonger(), "q", "same", "also").winner == "tie"


def test_an_unparseable_verdict_is_counted_and_gives_no_vote() -> None:
    battle = judge_battle(Mumbles(), "q", "long answer", "short")
    assert battle.winner is None
    assert battle.unparseable == 1
    assert battle.verdicts[0] == {"order": "ab", "verdict": None, "raw": "hmm, hard to say"}
    assert battle.verdicts[1]["verdict"] == "B"
