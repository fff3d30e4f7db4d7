"""Data files are untrusted: an overlong line or row, or deep JSON, is a bad row, not a crash."""

from __future__ import annotations

import json
from pathlib import Path

from runners.data import readers
from runners.data.readers import read_source


def test_overlong_jsonl_line_is_a_bad_row_and_numbering_continues(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_ROW_CHARS", 1000)
    good = json.dumps({"prompt": "p", "response": "r"})
    path = tmp_path / "rows.jsonl"
    long = json.dumps({"prompt": "x" * 5000, "response": "r"})
    path.write_text(f"{good}\n{long}\n{good}\n" + "[" * 100_000 + "\n", encoding="utf-8")
    loaded = read_source(path, "data/rows.jsonl", "instruction", "auto", {})
    assert [r["_source"] for r in loaded.rows] == ["data/rows.jsonl:1", "data/rows.jsonl:3"]
    problems = {b.line: b.problem for b in loaded.bad}
    assert set(problems) == {2, 4}
    assert "at most 1,000" in problems[2] and "split or shorten" in problems[2]


def test_deeply_nested_json_is_a_bad_row(tmp_path: Path):
    path = tmp_path / "rows.jsonl"
    path.write_text("[" * 200_000 + "]" * 200_000 + "\n", encoding="utf-8")
    loaded = read_source(path, "rows.jsonl", "instruction", "auto", {})
    assert loaded.rows == [] and "nested too deeply" in loaded.bad[0].problem


def test_overlong_csv_row_is_a_bad_row(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_ROW_CHARS", 100)
    path = tmp_path / "rows.csv"
    path.write_text("prompt,response\na,b\n" + "y" * 500 + ",c\n", encoding="utf-8")
    loaded = read_source(path, "rows.csv", "instruction", "auto", {})
    assert len(loaded.rows) == 1 and loaded.bad[0].line == 3
