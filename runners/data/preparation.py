"""Runner `prepare`, preparation: sources -> mixture -> steps in order -> splits -> files."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runners.data import steps
from runners.data.augment import Teacher, augment
from runners.data.readers import BadRow, read_source
from runners.data.rows import Row, content_hash
from runners.data.splits import SPLITS, assign
from runners.data.stats import length_stats, plot_histogram, token_lengths
from runners.errors import LlmopsError
from runners.weights import SAFE_TOKENIZER

MAX_BAD_ROWS_SHOWN = 20


class PrepareError(LlmopsError):
    """A permanent problem with the data or the spec; the message says where and what to do."""


@dataclass
class SourceInput:
    """One entry of spec.sources, resolved: a file on disk, or rows the controller read."""

    weight: float = 1.0
    path: Path | None = None
    shown: str = ""
    file_format: str = "auto"
    mapping: dict[str, str] = field(default_factory=dict)
    rows: list[Row] | None = None


@dataclass
class PrepareInputs:
    name: str
    spec: dict[str, Any]
    sources: list[SourceInput]
    out: Path
    eval_texts: list[str] = field(default_factory=list)
    tokenizer_path: Path | None = None
    model_paths: dict[str, Path] = field(default_factory=dict)
    report: Callable[[str], None] = print
    # Teacher endpoints of augment steps, by step index, and their request cache file
    teachers: dict[int, Teacher] = field(default_factory=dict)
    request_cache: Path | None = None


@dataclass
class PrepareResult:
    version: str
    splits: dict[str, int]
    steps: list[dict[str, Any]]
    bad_rows: list[str]
    stats: dict[str, Any]
    files: list[str]


def _weighted(rows: list[Row], weight: float) -> list[Row]:
    """weight 1 keeps every row; 0.5 keeps a deterministic half; 2.0 repeats them twice."""
    if weight == 1.0:
        return rows
    whole = math.floor(weight)
    ranked = sorted(rows, key=content_hash)
    return rows * whole + ranked[: round(len(rows) * (weight - whole))]


def _tokenizer(path: Path | None) -> Callable[[str], int] | None:
    if path is None:
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), **SAFE_TOKENIZER)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def prepare(inputs: PrepareInputs) -> PrepareResult:
    spec, fmt = inputs.spec, inputs.spec["format"]
    rows: list[Row] = []
    bad: list[BadRow] = []
    for source in inputs.sources:
        if source.rows is not None:
            part = [dict(r) for r in source.rows]
        else:
            assert source.path is not None
            loaded = read_source(source.path, source.shown, fmt, source.file_format, source.mapping)
            bad.extend(loaded.bad)
            part = loaded.rows
        rows.extend(_weighted(part, source.weight))
    if bad and spec.get("on_bad_rows", "fail") == "fail":
        shown = "\n".join(b.render() for b in bad[:MAX_BAD_ROWS_SHOWN])
        more = f"\n... and {len(bad) - MAX_BAD_ROWS_SHOWN} more" if len(bad) > 20 else ""
        raise PrepareError(
            f"{len(bad)} bad row(s) in {inputs.name}'s sources:\n{shown}{more}\n"
            "fix them, or set 'on_bad_rows: skip' in the Dataset spec to skip and count them"
        )
    reports = [steps.StepReport("load", len(rows) + len(bad), len(rows), {"bad_rows": len(bad)})]
    count_tokens = _tokenizer(inputs.tokenizer_path)
    for index, step in enumerate(spec.get("steps") or []):
        kind = step["step"]
        before = len(rows)
        try:
            if kind == "normalize":
                rows, details = steps.normalize(rows, fmt, step)
            elif kind == "filter":
                counter = count_tokens
                if step.get("tokenizer"):
                    counter = _tokenizer(inputs.model_paths.get(step["tokenizer"]))
                rows, details = steps.filter_rows(rows, fmt, step, counter)
            elif kind == "dedup":
                rows, details = steps.dedup(rows)
            elif kind == "near_dedup":
                rows, details = steps.near_dedup(rows, fmt, step)
            elif kind == "redact_pii":
                rows, details = steps.redact_pii(rows, fmt, step)
            elif kind == "decontaminate":
                rows, details = steps.decontaminate(rows, fmt, step, inputs.eval_texts)
            elif kind == "augment":
                rows, details = augment(
                    rows,
                    fmt,
                    step,
                    inputs.model_paths.get(step.get("model") or ""),
                    inputs.teachers.get(index),
                    inputs.request_cache,
                )
            else:
                raise PrepareError(f"unknown step '{kind}'")
        except ValueError as err:
            raise PrepareError(f"step {index + 1} ({kind}): {err}") from err
        reports.append(steps.StepReport(kind, before, len(rows), details))

    splits_spec = spec.get("splits") or {}
    fractions = {
        name: float(splits_spec.get(name, default))
        for name, default in zip(SPLITS, (0.9, 0.05, 0.05), strict=True)
    }
    splits = assign(rows, fractions, str(splits_spec.get("salt", "")))
    return _write(inputs, fmt, splits, reports, bad, count_tokens)


def read_split(folder: Path, split: str) -> list[dict[str, Any]]:
    """The rows of one split of a prepared version (as `_write` wrote them); [] when absent."""
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _write(
    inputs: PrepareInputs,
    fmt: str,
    splits: dict[str, list[Row]],
    reports: list[steps.StepReport],
    bad: list[BadRow],
    count_tokens: Callable[[str], int] | None,
) -> PrepareResult:
    out = inputs.out
    out.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    files = []
    for name in SPLITS:
        lines = [
            json.dumps(
                {k: v for k, v in r.items() if not k.startswith("_")},
                ensure_ascii=False,
                sort_keys=True,
            )
            for r in splits[name]
        ]
        text = "".join(line + "\n" for line in lines)
        (out / f"{name}.jsonl").write_text(text, encoding="utf-8")
        digest.update(f"{name}\0{text}\0".encode())
        files.append(f"{name}.jsonl")
    version = "sha256:" + digest.hexdigest()
    unit, lengths = token_lengths(splits, fmt, count_tokens)
    step_dicts = [r.as_dict() for r in reports]
    by_step = {d["step"]: d for d in step_dicts}
    stats = {
        "dataset": inputs.name,
        "version": version,
        "format": fmt,
        "rows": {name: len(rows) for name, rows in splits.items()},
        "rows_total": sum(len(rows) for rows in splits.values()),
        "bad_rows": len(bad),
        "duplicates_removed": by_step.get("dedup", {}).get("duplicates", 0),
        "near_duplicates_removed": by_step.get("near_dedup", {}).get("near_duplicates", 0),
        "redactions": by_step.get("redact_pii", {}).get("redactions", {}),
        "eval_overlap": by_step.get("decontaminate", {}).get("eval_overlap", 0),
        "length_unit": unit,
        "lengths": {name: length_stats(values) for name, values in lengths.items()},
        "steps": step_dicts,
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    if bad:
        (out / "bad_rows.txt").write_text("".join(b.render() + "\n" for b in bad))
        files.append("bad_rows.txt")
    plot_histogram(lengths, unit, f"{inputs.name} {version[7:19]}", out / "lengths.png")
    files += ["stats.json", "lengths.png"]
    return PrepareResult(
        version, stats["rows"], step_dicts, [b.render() for b in bad], stats, files
    )
