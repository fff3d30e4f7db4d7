"""A sample of `benchmarks/fuzz_specs.py` on every test run: hostile YAML never raises."""

from __future__ import annotations

from benchmarks.fuzz_specs import fuzz


def test_sampled_hostile_documents_give_located_diagnostics_and_no_traceback() -> None:
    counts, examples = fuzz(300, 19)
    assert counts["documents"] >= 250
    assert counts["tracebacks"] == 0, examples
    assert counts["invalid, unlocated"] == 0, examples
    assert counts["invalid, located"] > counts["valid"] > 0
