"""Production loop, collected window: the rows a deployment collected after a watermark, and
their snapshot file, pinned in the repository so a pull request is reproducible from git.

Snapshots live at `data/collected/<dataset>/<end>.jsonl`, named by the window's end (UTC);
the newest snapshot a Dataset spec names on the base branch is that branch's watermark.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runners.data.collected import FEEDBACK_FORMATS, feedback_rows, is_positive, joined_rows
from runners.data.rows import Row

SNAPSHOT_DIR = "data/collected"
STAMP = "%Y%m%dT%H%M%S%fZ"
_SNAPSHOT = re.compile(r"(?:^|/)data/collected/(?P<dataset>[^/]+)/(?P<end>\d{8}T\d{12}Z)\.jsonl$")


def parse_time(text: str) -> datetime:
    """An ISO time as the serving runtime writes it; naive times are taken as UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Window:
    """Collected interactions after `after` (exclusive) up to `until`, feedback joined."""

    store: str
    after: datetime | None
    until: datetime
    rows: tuple[Row, ...]

    @property
    def count(self) -> int:
        return len(self.rows)

    def kept(self, only_positive: bool, fmt: str = "instruction") -> list[Row]:
        """Rows a dataset takes: for a preference or unpaired Dataset, those whose feedback
        gives it rows (a correction, a rating); else rated up or corrected when it asks for
        positive ones only."""
        if fmt in FEEDBACK_FORMATS:
            return [r for r in self.rows if feedback_rows(r, fmt)]
        return [r for r in self.rows if is_positive(r)] if only_positive else list(self.rows)


def collected_window(
    store_dir: Path, store: str, after: datetime | None, until: datetime
) -> Window:
    """The interactions of `store` written in (after, until]; rows imported by hand (no
    time) are not part of any window."""
    rows, _bad = joined_rows(store_dir, f"collected/{store}")
    inside = []
    for row in rows:
        stamp = row.get("time")
        if not isinstance(stamp, str):
            continue
        moment = parse_time(stamp)
        if (after is None or moment > after) and moment <= until:
            inside.append(row)
    return Window(store, after, until, tuple(inside))


def snapshot_row(row: Row, fmt: str) -> dict[str, Any]:
    """A collected row in the Dataset's canonical format, with where it came from."""
    provenance = {"id": row.get("id"), "time": row.get("time"), "rating": row.get("rating")}
    if fmt == "chat":
        return {"messages": row["messages"], **provenance}
    if fmt == "text":
        return {"text": f"{row['prompt']}\n{row['response']}", **provenance}
    return {"prompt": row["prompt"], "response": row["response"], **provenance}


def snapshot_rows(row: Row, fmt: str) -> list[dict[str, Any]]:
    """The snapshot lines of one collected row: one, or for a preference or unpaired Dataset
    the rows its feedback gives (a correction, a rating), each with where it came from."""
    if fmt not in FEEDBACK_FORMATS:
        return [snapshot_row(row, fmt)]
    provenance = {"id": row.get("id"), "time": row.get("time"), "rating": row.get("rating")}
    return [{**r, **provenance} for r in feedback_rows(row, fmt)]


def snapshot_lines(rows: Iterable[Row], fmt: str) -> str:
    return "".join(
        json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n"
        for r in rows
        for line in snapshot_rows(r, fmt)
    )


def content_digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def snapshot_path(dataset: str, end: datetime) -> str:
    return f"{SNAPSHOT_DIR}/{dataset}/{end.astimezone(UTC).strftime(STAMP)}.jsonl"


def watermark(paths: Iterable[str], dataset: str) -> datetime | None:
    """The end of the newest snapshot of `dataset` among `paths` (a Dataset's sources)."""
    ends = []
    for path in paths:
        found = _SNAPSHOT.search(path)
        if found and found["dataset"] == dataset:
            ends.append(datetime.strptime(found["end"], STAMP).replace(tzinfo=UTC))
    return max(ends, default=None)
