"""State, apply mutex: one apply at a time per state folder, so no job ever runs twice.

The lock is an OS file lock (filelock): the kernel releases it when its holder dies, so a
killed apply never leaves a stale lock behind. Who holds it (pid, host, start time) is
written beside it for the message the waiting apply prints.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from runners.errors import RetryableError

LOCK_NAME = "apply.lock"
HOLDER_NAME = "apply.lock.json"


class ApplyBusy(RetryableError):
    """Another apply holds the lock and the caller asked not to wait."""

    exit_code = 4


def holder(folder: Path) -> str:
    """'pid 123 on host, for 42 s' from the holder file; 'another process' when unknown."""
    try:
        info = json.loads((folder / HOLDER_NAME).read_text())
        return (
            f"pid {info['pid']} on {info['host']}, running for "
            f"{time.time() - float(info['started']):.0f} s"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def exclusive_apply(
    folder: Path,
    wait: bool = True,
    on_wait: Callable[[str], None] | None = None,
    timeout_s: float = -1,
    activity: str = "apply",
) -> Iterator[None]:
    """Hold `folder`'s mutex (the state folder's, for applies); wait for it (telling `on_wait`
    once) or raise ApplyBusy naming `activity` and who holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        who = holder(folder)
        if not wait:
            hint = "run without --no-wait to queue behind it" if activity == "apply" else ""
            raise ApplyBusy(
                f"another {activity} is running ({who}); wait for it"
                + (f", or {hint}" if hint else "")
            ) from None
        if on_wait:
            on_wait(who)
        try:
            lock.acquire(timeout=timeout_s)
        except Timeout:
            raise ApplyBusy(
                f"another {activity} is still running after {timeout_s:.0f} s ({holder(folder)})"
            ) from None
    try:
        (folder / HOLDER_NAME).write_text(
            json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        )
        yield
    finally:
        lock.release()
