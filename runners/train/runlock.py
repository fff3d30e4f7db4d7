"""Runner `train`, run-folder lock: one training process writes a run folder at a time.

The process that trains holds an OS lock (flock) on `<run>/train.lock` for its whole life
and records there its pid, its parent's pid, the host and when it started; the kernel drops
the lock when the process dies, however it dies. The controller takes the same lock before
it starts a run and hands the descriptor to the child it starts (the child inherits it), so
there is no moment when neither holds it: a child orphaned by a killed apply still holds the
lock, and the next apply finds it there (and stops it) before a new child writes beside it.
On Linux the child also asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG),
so an orphan usually dies at once; the lock is what holds where that does not happen.
Imports nothing heavy: the controller uses it without torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = "train.lock"  # in the run folder
FD_ENV = "LLMOPS_TRAIN_LOCK_FD"  # the lock's descriptor, inherited from the controller
PARENT_ENV = "LLMOPS_TRAIN_PARENT_PID"  # the controller that started this run
# Crash tests: no PR_SET_PDEATHSIG, as on a system without it, so an orphan outlives apply.
KEEP_ORPHAN_ENV = "LLMOPS_FAULT_KEEP_ORPHAN"
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Holder:
    """Who holds a run folder's lock, as it recorded itself."""

    pid: int
    parent: int | None
    host: str
    started: float

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, running for {time.time() - self.started:.0f} s"

    def is_here(self) -> bool:
        return self.host == socket.gethostname()

    def alive(self) -> bool:
        """A training process of this machine that has not exited (a zombie has)."""
        return self.is_here() and is_training_process(self.pid)

    def orphaned(self) -> bool:
        """Alive, but no longer the child of the process that started it: that one died."""
        return self.alive() and self.parent is not None and parent_of(self.pid) != self.parent


def try_lock(folder: Path) -> int | None:
    """The folder's lock, held through the returned descriptor; None when another holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def release(fd: int) -> None:
    """Close this process's descriptor (the lock goes once no process has it open)."""
    with contextlib.suppress(OSError):
        os.close(fd)


def record(fd: int, pid: int, parent: int | None) -> None:
    """Write who holds the lock into the lock file, for whoever finds it held."""
    data = json.dumps(
        {"pid": pid, "parent": parent, "host": socket.gethostname(), "started": time.time()}
    ).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def holder(folder: Path) -> Holder | None:
    """What the lock file says about its holder; None when it says nothing readable."""
    try:
        info = json.loads((folder / LOCK_FILE).read_text(encoding="utf-8"))
        return Holder(
            int(info["pid"]),
            int(info["parent"]) if info.get("parent") is not None else None,
            str(info["host"]),
            float(info["started"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_training_process(pid: int) -> bool:
    """Alive and a training runner: a recycled pid running something else is never signalled."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if b"runners.train" not in cmdline:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def hold_for_life(folder: Path) -> bool:
    """The running trainer's side: keep the lock the controller handed over (FD_ENV), or take
    it when started on its own; False when another process holds it (the caller refuses).
    The descriptor stays open until the process exits."""
    inherited = os.environ.get(FD_ENV)
    fd: int | None = None
    if inherited:
        try:
            fd = int(inherited)
            # Same open file as the controller's: this succeeds, and proves it is the lock.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != (folder / LOCK_FILE).stat().st_ino:
                fd = None
        except (OSError, ValueError):
            fd = None
    if fd is None:
        try:
            fd = try_lock(folder)
        except OSError:  # a file system without locks (some network mounts): train unguarded
            return True
        if fd is None:
            return False
    # The controller that started it, from its first moment: getppid() is init's already
    # when that one died before this line, and the next apply must see an orphan.
    parent = os.environ.get(PARENT_ENV)
    record(fd, os.getpid(), int(parent) if parent else os.getppid())
    return True


def die_with_parent() -> bool:
    """Ask for SIGTERM when the controller that started this process dies (Linux); False
    when it is already gone (this process is an orphan from its first moment)."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or os.environ.get(KEEP_ORPHAN_ENV):
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the run-folder lock still protects the run
        return True
    return os.getppid() == int(parent)  # it may have died before the request was made
