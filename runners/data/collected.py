"""Runner `prepare`, collected data: a serving store's interactions joined with their feedback.

The serving runtime (runners/serve/collect.py) appends `interaction` and `feedback` records
to `<store>/<YYYY-MM-DD>.jsonl`. Here each interaction becomes one row
`{prompt, response, messages, rating}`: `messages` ends with the assistant's answer, and a
person's correction replaces the answer in both `messages` and `response`; `served` keeps
what the model answered and `context` the conversation before it. A record without a `type`
(rows imported into the store by hand) is taken as it is. The Dataset's mapping then picks
the canonical fields, as for a file source; a `preference` or `unpaired` Dataset takes the
feedback itself (`feedback_rows`): a correction is a pair, the correction chosen over the
served answer, and a thumbs up or down labels the served answer desirable or undesirable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runners.data.readers import BadRow, Loaded
from runners.data.rows import CANONICAL_FIELDS, Row, check_row


def _records(store: Path, shown: str, bad: list[BadRow]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(store.glob("*.jsonl")) if store.is_dir() else []:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{shown}/{path.name}:{number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    bad.append(BadRow(f"{shown}/{path.name}", number, f"invalid JSON: {err.msg}"))
                    continue
                if not isinstance(record, dict):
                    bad.append(BadRow(f"{shown}/{path.name}", number, "not a JSON object"))
                    continue
                out.append((where, record))
    return out


def joined_rows(store: Path, shown: str = "collected") -> tuple[list[Row], list[BadRow]]:
    """Interactions in the order they were written, each with its latest feedback applied."""
    bad: list[BadRow] = []
    records = _records(store, shown, bad)
    feedback: dict[str, dict[str, Any]] = {}
    for _, record in records:
        if record.get("type") == "feedback" and isinstance(record.get("id"), str):
            feedback[record["id"]] = record  # the latest verdict on an answer wins
    rows: list[Row] = []
    for where, record in records:
        kind = record.get("type")
        if kind is None:
            rows.append({**record, "_source": where})
            continue
        if kind != "interaction":
            continue
        verdict = feedback.get(str(record.get("id")), {})
        correction = verdict.get("correction")
        answer = correction if isinstance(correction, str) and correction.strip() else None
        response = answer if answer is not None else record.get("response", "")
        messages = [m for m in record.get("messages") or [] if isinstance(m, dict)]
        rows.append(
            {
                "id": record.get("id"),
                "prompt": record.get("prompt", ""),
                "response": response,
                "messages": [*messages, {"role": "assistant", "content": response}],
                "rating": verdict.get("rating"),
                "corrected": answer is not None,
                "served": record.get("response", ""),
                "context": messages,
                "time": record.get("time"),
                "model_version": record.get("model_version"),
                "_source": where,
            }
        )
    return rows, bad


def is_positive(row: Row) -> bool:
    """Rated up, or corrected: a correction is the answer a person wrote and approves."""
    return row.get("rating") == "up" or bool(row.get("corrected"))


FEEDBACK_FORMATS = ("preference", "unpaired")


def context_prompt(row: Row) -> str | list[dict[str, str]]:
    """The conversation before the answer: the user's message when it is the only turn, else
    every earlier turn (system message included) as a list of {role, content} messages, which
    the trainer and the preference evaluation render through the model's chat template."""
    turns = [
        {"role": str(m.get("role") or "user"), "content": m["content"]}
        for m in row.get("context") or []
        if isinstance(m.get("content"), str)
    ]
    if len(turns) == 1 and turns[0]["role"] == "user":
        return turns[0]["content"]
    if not turns:
        return str(row.get("prompt", ""))
    return turns


def feedback_rows(row: Row, fmt: str) -> list[Row]:
    """The `preference` or `unpaired` rows one collected interaction gives, from its feedback.

    A correction different from the served answer: a pair (correction chosen, served answer
    rejected), or for `unpaired` the two as a desirable and an undesirable completion. With
    no correction, a rating labels the served answer: up desirable, down undesirable (no
    pair). No feedback, or a correction equal to what was served: no rows.
    """
    prompt = context_prompt(row)
    served = row.get("served")
    served = served if isinstance(served, str) else str(row.get("response", ""))
    correction = row.get("response") if row.get("corrected") else None
    if isinstance(correction, str) and correction.strip() and correction != served:
        if fmt == "preference":
            return [{"prompt": prompt, "chosen": correction, "rejected": served}]
        return [
            {"prompt": prompt, "completion": correction, "label": True},
            {"prompt": prompt, "completion": served, "label": False},
        ]
    rating = row.get("rating")
    if fmt == "unpaired" and rating in ("up", "down") and not row.get("corrected"):
        return [{"prompt": prompt, "completion": served, "label": rating == "up"}]
    return []


def read_collected(
    store: Path, shown: str, fmt: str, mapping: dict[str, str], only_positive: bool
) -> Loaded:
    """Canonical rows of `fmt` from a store, mapped like a file source; problems as BadRows.
    A `preference` or `unpaired` format with no mapping takes the rows of `feedback_rows`
    (`only_positive` does not apply: a thumbs-down answer is the undesirable side)."""
    rows, bad = joined_rows(store, shown)
    loaded = Loaded(bad=bad)
    if fmt in FEEDBACK_FORMATS and not mapping:
        for row in rows:
            if "context" not in row:  # imported by hand: taken as a row of the format
                rows_of = [{k: row[k] for k in CANONICAL_FIELDS[fmt] if k in row}]
            else:
                rows_of = feedback_rows(row, fmt)
            file, _, line = row["_source"].rpartition(":")
            for index, canonical in enumerate(rows_of):
                problem = check_row(canonical, fmt)
                if problem:
                    loaded.bad.append(BadRow(file, int(line), problem))
                    continue
                suffix = f"#{index + 1}" if len(rows_of) > 1 else ""
                loaded.rows.append({**canonical, "_source": row["_source"] + suffix})
        return loaded
    for row in rows:
        if only_positive and not is_positive(row):
            continue
        source = row["_source"]
        file, _, line = source.rpartition(":")
        canonical: Row = {}
        missing = []
        for name in CANONICAL_FIELDS[fmt]:
            column = mapping.get(name, name)
            if column in row:
                canonical[name] = row[column]
            else:
                missing.append(column if column == name else f"{column} (mapped to {name})")
        problem = f"missing field {', '.join(missing)}" if missing else check_row(canonical, fmt)
        if problem:
            loaded.bad.append(BadRow(file, int(line), problem))
            continue
        canonical["_source"] = source
        loaded.rows.append(canonical)
    return loaded
