"""Golden plans: each case folder's specs + llmops.lock must give exactly expected.json."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from controller.workspace import make_plan

CASES = sorted(p for p in (Path(__file__).parent / "cases").iterdir() if p.is_dir())


def test_cases_were_found() -> None:
    assert len(CASES) >= 8


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_plan_matches_golden(case: Path, tmp_path: Path) -> None:
    work = tmp_path / case.name
    shutil.copytree(case, work, ignore=shutil.ignore_patterns("expected.json", ".llmops"))
    loaded, plan = make_plan(work)
    assert plan is not None, [d.render() for d in loaded.diagnostics]
    actual = json.dumps(plan.as_dict(), indent=2, sort_keys=True) + "\n"
    expected_file = case / "expected.json"
    if os.environ.get("UPDATE_GOLDEN"):
        expected_file.write_text(actual)
    assert expected_file.exists(), "run UPDATE_GOLDEN=1 pytest tests/golden to create it"
    assert actual == expected_file.read_text()
