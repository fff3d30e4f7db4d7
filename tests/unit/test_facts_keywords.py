"""The demo's facts check (examples/openai_app/facts_check.py): a keyword counts only as a
whole word or figure, so a wrong price that merely starts with the right digits fails."""

from __future__ import annotations

import importlib.util
import sys

from tests.conftest import PROJECT_ROOT

EXAMPLES = PROJECT_ROOT / "examples/openai_app"


def _facts_check():
    sys.path.insert(0, str(EXAMPLES))  # the script imports its sibling module `deployment`
    try:
        spec = importlib.util.spec_from_file_location("facts_check", EXAMPLES / "facts_check.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["facts_check"] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLES))


def test_keywords_match_whole_words_and_figures_only() -> None:
    passes = _facts_check().passes
    # Answers SmolLM2 fine-tunes gave: the second named $150 and $160, not $16.
    assert passes("Business is $16 per user per month billed annually.", ["$16"])
    assert passes("Business costs $16.", ["$16"])
    assert not passes("The Business plan is $150 ... and $160 per user.", ["$16"])
    assert passes("Yes, Android 10 and later.", ["android 10"])
    assert not passes("Android 100 only.", ["Android 10"])
    assert passes("Go to Settings > Billing > Change plan.", ["Settings > Billing"])
    assert passes("Write to support@orbitask.example.", ["support@orbitask.example"])
    assert passes("It takes 5-10 business days.", ["5-10 business days"])
    assert not passes("It takes 15-10 business days.", ["5-10 business days"])
    assert passes("Business is €15 per user monthly.", ["€15"])
    assert not passes("Business is €150.", ["€15"])
    assert not passes("Japanese and more", ["Japanese", "Korean"])
