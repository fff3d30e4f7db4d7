"""Runner `serve`, usage: which client a request came from, what it used, and the rows that
record it, one JSONL file per UTC day in the deployment's state folder (`usage/`), which
`llmops usage` and a restarted runtime's daily quotas read back."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

USAGE_FOLDER = "usage"

# Set by the key check (middleware.py) for the request being served; read by whatever runs
# for it: the routes, the collector (asyncio.to_thread copies the context), admission.py.
CLIENT: ContextVar[str | None] = ContextVar("llmops_serve_client", default=None)


@dataclass
class RequestUsage:
    """Tokens one request used; written by its generation thread before the result is handed
    to the event loop, read by accounting.py once the response is complete."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


USAGE: ContextVar[RequestUsage | None] = ContextVar("llmops_serve_usage", default=None)


def current_client() -> str | None:
    return CLIENT.get()


def current_usage() -> RequestUsage | None:
    return USAGE.get()


def usage_folder(state_dir: Path) -> Path:
    return state_dir / USAGE_FOLDER


@dataclass
class Totals:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add_row(self, row: dict[str, Any]) -> None:
        self.requests += 1
        self.prompt_tokens += int(row.get("prompt_tokens") or 0)
        self.completion_tokens += int(row.get("completion_tokens") or 0)

    def as_dict(self) -> dict[str, int]:
        data = asdict(self)
        data["total_tokens"] = self.prompt_tokens + self.completion_tokens
        return data


class UsageLog:
    """Appends one row per API request. As collect.py: a thread lock and a file lock, so the
    process replacing this one during a rollout never interleaves lines with it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.file_lock = FileLock(str(folder / ".write.lock"))

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False) + "\n"
        path = self.folder / f"{row['time'][:10]}.jsonl"
        with self.lock, self.file_lock, path.open("a", encoding="utf-8") as handle:
            handle.write(line)


def row(client: str, route: str, status: int, usage: RequestUsage, version: str) -> dict[str, Any]:
    return {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "client": client,
        "route": route,
        "status": status,
        "model_version": version,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
    }


def read_rows(folder: Path, since: datetime | None = None) -> Iterator[dict[str, Any]]:
    """The rows at or after `since` (aware), oldest file first. A line cut short by a crash
    mid-write is skipped: the rest of the file still counts."""
    if not folder.is_dir():
        return
    first_day = since.astimezone(UTC).date().isoformat() if since else ""
    for path in sorted(folder.glob("*.jsonl")):
        if path.stem < first_day:
            continue
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    data = json.loads(line)
                    when = datetime.fromisoformat(data["time"])
                except (ValueError, KeyError, TypeError):
                    continue
                if since is None or when >= since:
                    yield data


def totals(folder: Path, since: datetime | None = None) -> dict[str, Totals]:
    """Requests and tokens per client since `since`, clients by name."""
    out: dict[str, Totals] = {}
    for data in read_rows(folder, since):
        out.setdefault(str(data.get("client")), Totals()).add_row(data)
    return dict(sorted(out.items()))


def tokens_today(folder: Path, now: datetime | None = None) -> dict[str, int]:
    """Tokens each client spent on the current UTC day: a restarted runtime's daily quotas
    start from these, so a rollout does not hand every client a fresh day."""
    now = now or datetime.now(UTC)
    midnight = datetime.combine(now.date(), datetime.min.time(), UTC)
    return {
        name: t.prompt_tokens + t.completion_tokens for name, t in totals(folder, midnight).items()
    }
