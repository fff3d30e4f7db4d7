"""Runner `serve`, throttle: a token bucket per client address, in front of /v1/feedback
(each accepted call is a row that may become training data)."""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable

# Buckets kept at most; the least recently seen client is forgotten first (it then starts
# with a full bucket again, which costs at most `burst` rows).
MAX_CLIENTS = 4096


def client_key(address: str | None) -> str:
    """The bucket a client address counts against: IPv6 by its /64, as one host holds a
    whole /64 and could otherwise take a fresh bucket per address."""
    if not address:
        return "-"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class ClientBuckets:
    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self.max_clients = max_clients
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, address: str | None) -> float:
        """0 when the client may go ahead (a token is spent); else the seconds to wait.

        Runs on the event loop only, so it needs no lock."""
        key, now = client_key(address), self.clock()
        tokens, then = self.buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self.buckets[key] = (tokens, now)
        while len(self.buckets) > self.max_clients:
            self.buckets.popitem(last=False)
        return wait


def retry_after(wait_s: float) -> str:
    return str(max(1, math.ceil(wait_s)))
