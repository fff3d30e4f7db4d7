"""PII redaction measured on a labelled corpus (tests/fixtures/pii/corpus.jsonl)."""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks.pii_redaction import STRUCTURED, measure, structured_totals
from runners.data.steps import PII_PATTERNS, redact_text


def test_structured_kinds_recall_and_precision() -> None:
    figures = measure()
    misses = list(figures.pop("_misses"))
    for kind in STRUCTURED:
        assert figures[kind]["labelled"] >= 15
        assert figures[kind]["recall"] >= 0.95, (kind, misses)
        assert figures[kind]["precision"] >= 0.95, (kind, misses)
    recall, precision = structured_totals(figures)
    assert recall >= 0.95 and precision >= 0.95


@pytest.mark.parametrize(
    "text",
    [
        "ISBN 978-3-16-148410-0",
        "pi is 3.14159265",
        "Logged at 2024-05-01 10:30:00",
        "std::vector and a::b",
        "version 1.2.3 on 15-20 May",
        "Order #123456789",
    ],
)
def test_look_alikes_are_kept(text: str) -> None:
    assert redact_text(text, list(PII_PATTERNS), Counter()) == text
