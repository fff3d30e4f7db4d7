"""Runner `prepare`, readers: source files into canonical rows; bad rows named by file:line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runners.data.rows import CANONICAL_FIELDS, Row, check_row

# Data files come from pull requests too: a line (JSONL) or a row's text (any format) over
# this many characters is a bad row, read and skipped in bounded chunks, never held whole.
MAX_ROW_CHARS = 1024 * 1024


@dataclass
class BadRow:
    file: str
    line: int
    problem: str

    def render(self) -> str:
        return f"{self.file}:{self.line}: {self.problem}"


@dataclass
class Loaded:
    rows: list[Row] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)


def detect_format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    if path.is_dir():
        return "disk"
    suffix = path.suffix.lower()
    return {
        ".jsonl": "jsonl",
        ".json": "jsonl",
        ".csv": "csv",
        ".parquet": "parquet",
        ".txt": "text",
        ".md": "text",
    }.get(suffix, "jsonl")


def _records(path: Path, shown: str, fmt: str, loaded: Loaded) -> list[tuple[int, Any]]:
    """(line or row number, record) pairs; JSON syntax errors are bad rows."""
    if fmt == "jsonl":
        out = []
        for number, line in _bounded_lines(path, shown, loaded):
            if not line.strip():
                continue
            try:
                out.append((number, json.loads(line.rstrip("\r\n"))))
            except json.JSONDecodeError as err:
                loaded.bad.append(
                    BadRow(shown, number, f"invalid JSON: {err.msg} (column {err.colno})")
                )
            except RecursionError:
                loaded.bad.append(BadRow(shown, number, "JSON nested too deeply"))
        return out
    import datasets

    datasets.disable_progress_bars()
    if fmt == "csv":
        table = datasets.Dataset.from_csv(str(path), keep_in_memory=True)
        first = 2  # line 1 is the header
    elif fmt == "parquet":
        table = datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
        first = 1
    elif fmt == "text":
        table = datasets.Dataset.from_text(str(path), keep_in_memory=True)
        first = 1
    elif fmt == "disk":
        table = datasets.load_from_disk(str(path), keep_in_memory=True)
        if isinstance(table, datasets.DatasetDict):
            table = table["train"] if "train" in table else next(iter(table.values()))
        first = 1
    else:
        raise ValueError(f"unknown file format '{fmt}'")
    out = []
    for index, record in enumerate(table):
        size = sum(len(v) for v in record.values() if isinstance(v, str))
        if size > MAX_ROW_CHARS:
            loaded.bad.append(BadRow(shown, index + first, _too_long(size)))
        else:
            out.append((index + first, record))
    return out


def _too_long(size: int | str) -> str:
    return f"row of {size} characters (at most {MAX_ROW_CHARS:,}); split or shorten it"


def _bounded_lines(path: Path, shown: str, loaded: Loaded) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file; a line over MAX_ROW_CHARS is a bad row, skipped."""
    with path.open(encoding="utf-8") as handle:
        number = 0
        while True:
            line = handle.readline(MAX_ROW_CHARS + 1)
            if not line:
                return
            number += 1
            if len(line) <= MAX_ROW_CHARS or line.endswith("\n"):
                yield number, line
                continue
            while line and not line.endswith("\n"):  # skip the rest of the long line
                line = handle.readline(MAX_ROW_CHARS)
            loaded.bad.append(BadRow(shown, number, _too_long(f"over {MAX_ROW_CHARS:,}")))


def read_source(path: Path, shown: str, fmt: str, declared: str, mapping: dict[str, str]) -> Loaded:
    """Canonical rows from one file; each problem is a BadRow with its line."""
    loaded = Loaded()
    kind = detect_format(path, declared)
    wanted = CANONICAL_FIELDS[fmt]
    for number, record in _records(path, shown, kind, loaded):
        if kind == "text" and isinstance(record, dict) and fmt == "text" and not mapping:
            record = {"text": record.get("text", "")}
        if not isinstance(record, dict):
            loaded.bad.append(BadRow(shown, number, "a row must be a JSON object"))
            continue
        row: Row = {}
        missing = []
        for name in wanted:
            column = mapping.get(name, name)
            if column in record:
                row[name] = record[column]
            else:
                missing.append(column if column == name else f"{column} (mapped to {name})")
        if missing:
            loaded.bad.append(BadRow(shown, number, f"missing field {', '.join(missing)}"))
            continue
        problem = check_row(row, fmt)
        if problem:
            loaded.bad.append(BadRow(shown, number, problem))
            continue
        row["_source"] = f"{shown}:{number}"
        loaded.rows.append(row)
    return loaded
