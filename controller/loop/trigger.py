"""Production loop, trigger: whether a pipeline run goes ahead (pure: times are passed in).

A schedule (five-field cron, read by croniter) is due when one of its ticks fell after the
last run; however many ticks were missed, one run catches up with all of them. `min_new_rows`
counts collected rows since the last run's watermark.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from croniter import croniter


@dataclass(frozen=True)
class Decision:
    go: bool
    reason: str
    new_rows: int
    next_tick: datetime | None = None


def last_tick(schedule: str, now: datetime) -> datetime:
    return croniter(schedule, now).get_prev(datetime)


def next_tick(schedule: str, now: datetime) -> datetime:
    return croniter(schedule, now).get_next(datetime)


def decide(
    schedule: str | None,
    min_new_rows: int,
    new_rows: int,
    last_run: datetime | None,
    now: datetime,
    scheduled: bool,
) -> Decision:
    """`scheduled`: started by the scheduler, so the spec's schedule must be due as well."""
    upcoming = next_tick(schedule, now) if schedule else None
    if scheduled and schedule and last_run is not None and last_tick(schedule, now) <= last_run:
        return Decision(
            False,
            f"not due: next tick of '{schedule}' is {upcoming:%Y-%m-%d %H:%M} UTC",
            new_rows,
            upcoming,
        )
    if new_rows < min_new_rows:
        return Decision(
            False,
            f"{new_rows} new row(s) since the last run; the trigger needs {min_new_rows}",
            new_rows,
            upcoming,
        )
    return Decision(True, f"{new_rows} new row(s) since the last run", new_rows, upcoming)
