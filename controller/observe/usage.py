"""Observation, usage: what each client of a deployment used (requests, prompt and completion
tokens), from the rows its runtime appends to the deployment's state folder
(runners/serve/usage.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from controller.state.paths import StatePaths
from runners.serve.usage import Totals, totals, usage_folder

_SPAN = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """'24h', '30m', '7d' (before now), or an ISO date or time (UTC unless it says). ValueError
    with what is accepted otherwise."""
    now = now or datetime.now(UTC)
    text = text.strip()
    span = _SPAN.match(text.lower())
    if span:
        return now - timedelta(**{_UNITS[span.group(2)]: int(span.group(1))})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"'{text}' is neither a span (30m, 24h, 7d, 2w) nor an ISO date or time "
            "(2026-12-01, 2026-12-01T08:00:00+00:00)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class DeploymentUsage:
    deployment: str
    folder: Path
    since: datetime | None
    clients: dict[str, Totals]

    @property
    def recorded(self) -> bool:
        return self.folder.is_dir()

    def total(self) -> Totals:
        out = Totals()
        for one in self.clients.values():
            out.requests += one.requests
            out.prompt_tokens += one.prompt_tokens
            out.completion_tokens += one.completion_tokens
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "since": self.since.isoformat() if self.since else None,
            "clients": {name: one.as_dict() for name, one in self.clients.items()},
            "total": self.total().as_dict(),
        }


def deployment_usage(paths: StatePaths, name: str, since: datetime | None) -> DeploymentUsage:
    folder = usage_folder(paths.deployment(name))
    return DeploymentUsage(name, folder, since, totals(folder, since))
