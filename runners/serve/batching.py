"""Runner `serve`, batching: the scheduler thread both backends use to step their requests.

A backend's worker threads (admission.py) submit requests and wait on them; the first
submission starts one daemon thread that owns the model and runs the backend's `_run`
loop, which takes requests from `inbox` and steps everything active together.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from typing import Any, Generic, TypeVar

R = TypeVar("R")


class SchedulerThread(ABC, Generic[R]):
    """Inbox, wake-ups and shutdown; a backend's subclass implements `_run`."""

    thread_name = "batcher"

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.inbox: deque[R] = deque()
        self.active: list[R] = []
        self.thread: threading.Thread | None = None
        self.closed = False
        self.steps = 0  # decode steps run (for tests and metrics)
        self.max_batch_seen = 0

    def submit(self, request: R) -> None:
        with self.condition:
            if self.closed:
                raise RuntimeError("the model is shutting down")
            self.inbox.append(request)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
                self.thread.start()
            self.condition.notify()

    def close(self) -> None:
        with self.condition:
            self.closed = True
            self.condition.notify()

    @abstractmethod
    def _run(self) -> Any:
        """The backend's loop: admit from `inbox`, step `active`, return once `closed`."""
