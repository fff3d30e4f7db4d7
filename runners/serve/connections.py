"""Runner `serve`, connections: read deadlines and a cap on half-sent requests (slow loris).

Sits under uvicorn's HTTP protocol, before any ASGI middleware sees a request. uvicorn
(0.54) times out only idle keep-alive connections, and every byte received cancels that
timer, so a client that sends its headers a byte at a time holds a connection, a file
descriptor and parser state forever (uvicorn issue #157 lists the missing
"timeout-request-start"; no maintained add-on provides it). This wraps whichever protocol
class uvicorn picked (httptools or h11) without touching its parser:

- a request's headers must arrive within `header_timeout_s` of its first byte (of the
  connection opening, for the first request) and the whole request, body included, within
  `read_timeout_s`; past that the client gets 408 and the connection is closed. The clock
  stops once the request is in, so a long streamed answer is never cut;
- at most `max_pending_connections` connections may be still sending a request; a new one
  beyond that closes the *oldest* pending one, so an attacker holding the cap cannot keep
  out a normal client, whose request arrives in one packet and is pending for a moment.

Progress is read from the state both uvicorn protocols share: `self.cycle` is replaced when
a request's headers are complete, and `cycle.more_body` turns false when its body is in.
"""

from __future__ import annotations

import asyncio
from typing import Any

from runners.serve.config import Limits
from runners.serve.metrics import REJECTED

HEADERS, BODY = "header_timeout", "read_timeout"


class Pending:
    """The connections of one process still sending a request, oldest first."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.order: dict[Any, None] = {}  # a dict keeps insertion order: oldest first

    def add(self, connection: Any) -> None:
        self.order.pop(connection, None)
        while len(self.order) >= self.cap:
            next(iter(self.order)).cut("pending_connections")  # discards itself
        self.order[connection] = None

    def discard(self, connection: Any) -> None:
        self.order.pop(connection, None)

    def __len__(self) -> int:
        return len(self.order)


def _timeout_response(message: str) -> bytes:
    body = message.encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class _Guard(asyncio.Protocol):
    """The deadlines and the pending cap, mixed in before a uvicorn HTTP protocol class,
    whose `loop`, `transport` and `cycle` it reads."""

    pending_connections: Pending
    header_s: float
    read_s: float
    loop: asyncio.AbstractEventLoop
    transport: Any
    cycle: Any

    def connection_made(self, transport: Any) -> None:
        self._timer: asyncio.TimerHandle | None = None
        self._phase: str | None = None  # HEADERS or BODY while the client owes us bytes
        self._started = 0.0
        self._before: Any = None  # the cycle there was when this request began
        super().connection_made(transport)
        self._begin()

    def data_received(self, data: bytes) -> None:
        if self._phase is None:  # the first byte of the next request on this connection
            self._begin()
        super().data_received(data)
        self._progress()

    def connection_lost(self, exc: Exception | None) -> None:
        self._settle()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._phase is not None and self._timer is None:
            # The next request arrived while we were still answering (pipelining):
            # its clock was stopped because the wait was ours; it starts now.
            self._begin()

    # -- the deadline ------------------------------------------------------------

    def _begin(self) -> None:
        self._started = self.loop.time()
        self._before = self.cycle
        self._phase = HEADERS
        self._arm(self.header_s)
        self.pending_connections.add(self)

    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(max(delay, 0.0), self._expired)

    def _progress(self) -> None:
        if self._phase is None or self.cycle is self._before:
            return  # headers still incomplete
        if self.cycle.more_body:
            if self._phase == HEADERS:
                self._phase = BODY
                self._arm(self._started + self.read_s - self.loop.time())
            return
        self._settle()  # the whole request is in: the rest is the server's time

    def _settle(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._phase = None
        self.pending_connections.discard(self)

    def _expired(self) -> None:
        self._timer = None
        cycle = self.cycle
        if (
            self._phase == HEADERS
            and cycle is not None
            and not cycle.more_body
            and not cycle.response_complete
        ):
            return  # still answering the previous request; on_response_complete rearms
        self.cut(self._phase or HEADERS)

    def cut(self, reason: str) -> None:
        """408 (when no answer has started) and close: the client was too slow."""
        phase = self._phase
        self._settle()
        REJECTED.labels(reason).inc()
        if self.transport.is_closing():
            return
        if reason == "pending_connections":
            message = (
                f"request timeout: {self.pending_connections.cap} connections were still "
                "sending a request and this one had waited longest; send the whole request "
                "at once"
            )
        elif phase == BODY:
            message = f"request timeout: the body did not arrive within {self.read_s:g} s"
        else:
            message = f"request timeout: the headers did not arrive within {self.header_s:g} s"
        cycle = self.cycle
        if phase == BODY and cycle is not None:
            if cycle.response_started:  # answered early (401, 413): nothing more to say
                self.transport.close()
                return
            cycle.disconnected = True  # the app's answer would come too late: drop it
            cycle.message_event.set()
        self.transport.write(_timeout_response(message))
        self.transport.close()


def guarded_protocol(base: type[Any], limits: Limits) -> type[asyncio.Protocol]:
    """`base` (a uvicorn HTTP protocol class) with read deadlines and the pending cap.

    One class per process: both listeners (port and public_port) share its Pending set,
    since they share the process's file descriptors.
    """
    name = f"Guarded{base.__name__}"
    guarded: type[asyncio.Protocol] = type(
        name,
        (_Guard, base),
        {
            "pending_connections": Pending(limits.max_pending_connections),
            "header_s": limits.header_timeout_s,
            "read_s": limits.read_timeout_s,
            "__qualname__": name,
        },
    )
    return guarded
