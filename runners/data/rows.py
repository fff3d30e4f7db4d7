"""Runner `prepare`, rows: canonical formats, their text fields, keys and content hashes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

CANONICAL_FIELDS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "instruction": ("prompt", "response"),
    "chat": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),  # label: true desirable, false undesirable
    "qa": ("question", "answers"),
}
KEY_FIELD = {
    "text": "text",
    "instruction": "prompt",
    "chat": "messages",
    "preference": "prompt",
    "unpaired": "prompt",
    "qa": "question",
}
Row = dict[str, Any]


def content_hash(row: Row) -> str:
    """sha256 of the canonical fields only (provenance fields starting with '_' excluded)."""
    data = {k: v for k, v in row.items() if not k.startswith("_")}
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def texts(row: Row, fmt: str) -> Iterator[str]:
    """Every string a person wrote in the row, in a stable order."""
    for name in CANONICAL_FIELDS[fmt]:
        value = row.get(name)
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    yield item
                elif isinstance(item, dict) and isinstance(item.get("content"), str):
                    yield item["content"]


def full_text(row: Row, fmt: str) -> str:
    return "\n".join(texts(row, fmt))


def map_texts(row: Row, fmt: str, fn: Callable[[str], str]) -> Row:
    """A copy of the row with `fn` applied to every text field."""
    out = dict(row)
    for name in CANONICAL_FIELDS[fmt]:
        value = row.get(name)
        if isinstance(value, str):
            out[name] = fn(value)
        elif isinstance(value, list):
            out[name] = [
                fn(item)
                if isinstance(item, str)
                else (
                    {**item, "content": fn(item["content"])}
                    if isinstance(item, dict) and isinstance(item.get("content"), str)
                    else item
                )
                for item in value
            ]
    return out


def row_key(row: Row, fmt: str) -> str:
    """What identifies 'the same row, changed': its prompt, question, text or first turn."""
    value = row.get(KEY_FIELD[fmt])
    if isinstance(value, list):
        value = next((m.get("content") for m in value if isinstance(m, dict)), "")
    return str(value)[:500]


def is_messages(value: Any) -> bool:
    """A non-empty list of chat messages, each {role, content} with string values."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in value
        )
    )


def check_row(row: Row, fmt: str) -> str | None:
    """Why a mapped row is not valid in its format, or None. A preference or unpaired row's
    prompt is a string, or the conversation before the answer as a list of messages."""
    for name in CANONICAL_FIELDS[fmt]:
        if name not in row or row[name] is None:
            return f"missing field '{name}'"
    if fmt == "chat":
        if not is_messages(row["messages"]) and row["messages"] != []:
            return "'messages' must be a list of {role, content}"
        return None
    if fmt in ("preference", "unpaired") and isinstance(row["prompt"], list):
        if not is_messages(row["prompt"]):
            return "'prompt' must be a string or a non-empty list of {role, content} messages"
        row = {**row, "prompt": ""}
    if fmt == "qa":
        if isinstance(row["answers"], str):
            row["answers"] = [row["answers"]]
        if not isinstance(row["answers"], list):
            return "'answers' must be a list of strings"
    elif fmt == "unpaired":
        for name in ("prompt", "completion"):
            if not isinstance(row[name], str):
                return f"'{name}' must be a string, got {type(row[name]).__name__}"
        if not isinstance(row["label"], bool):
            return (
                "'label' must be true (a desirable completion) or false (undesirable), "
                f"got {row['label']!r}"
            )
    else:
        for name in CANONICAL_FIELDS[fmt]:
            if not isinstance(row[name], str):
                return f"'{name}' must be a string, got {type(row[name]).__name__}"
    return None
