"""Runner `serve`, quotas: each client's requests per minute and tokens per UTC day (pure
accounting, clocks injected); accounting.py enforces them in front of the routes."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from runners.serve.config import Quotas

WINDOW_S = 60.0


class RequestWindow:
    """At most `limit` requests in any 60 seconds: a sliding log of the admitted ones (at most
    `limit` entries, so memory is bounded by the quota itself)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.times: deque[float] = deque()

    def take(self, now: float) -> float:
        """0 when a request may go ahead (it is counted); else the seconds until one may."""
        while self.times and self.times[0] <= now - WINDOW_S:
            self.times.popleft()
        if len(self.times) >= self.limit:
            return self.times[0] + WINDOW_S - now
        self.times.append(now)
        return 0.0


def until_midnight(now: datetime) -> float:
    tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    return (tomorrow - now).total_seconds()


class DailyTokens:
    """Tokens spent on the current UTC day. A request is admitted while the day's spend is
    below the limit; what it spends is known only when it finishes, so the one that crosses
    the limit completes and the next is refused until midnight UTC."""

    def __init__(self, limit: int, today: date, spent: int = 0) -> None:
        self.limit = limit
        self.day = today
        self.spent = spent

    def _roll(self, now: datetime) -> None:
        if now.date() != self.day:
            self.day, self.spent = now.date(), 0

    def wait(self, now: datetime) -> float:
        self._roll(now)
        return until_midnight(now) if self.spent >= self.limit else 0.0

    def spend(self, tokens: int, now: datetime) -> None:
        self._roll(now)
        self.spent += tokens


@dataclass(frozen=True)
class Refusal:
    quota: str  # "requests_per_minute" or "tokens_per_day", as the spec names it
    limit: int
    wait_s: float


class QuotaBook:
    """Every client's quotas. Runs on the event loop only, so it needs no lock."""

    def __init__(
        self,
        quotas: Mapping[str, Quotas],
        spent_today: Mapping[str, int] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        utcnow: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.monotonic = monotonic
        self.utcnow = utcnow
        today = utcnow().date()
        spent_today = spent_today or {}
        self.windows = {
            name: RequestWindow(q.requests_per_minute)
            for name, q in quotas.items()
            if q.requests_per_minute is not None
        }
        self.tokens = {
            name: DailyTokens(q.tokens_per_day, today, spent_today.get(name, 0))
            for name, q in quotas.items()
            if q.tokens_per_day is not None
        }

    def admit(self, client: str) -> Refusal | None:
        """None when `client` may make a request now (it counts against the minute's quota);
        else which quota refuses it and for how long. Tokens are checked first, so a request
        refused for tokens spends no request of the minute."""
        daily = self.tokens.get(client)
        if daily is not None:
            wait = daily.wait(self.utcnow())
            if wait:
                return Refusal("tokens_per_day", daily.limit, wait)
        window = self.windows.get(client)
        if window is not None:
            wait = window.take(self.monotonic())
            if wait:
                return Refusal("requests_per_minute", window.limit, wait)
        return None

    def spend(self, client: str, tokens: int) -> None:
        daily = self.tokens.get(client)
        if daily is not None and tokens:
            daily.spend(tokens, self.utcnow())
