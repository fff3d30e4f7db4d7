"""Runner `serve`, ports: who may share a public port that is bound with SO_REUSEPORT.

SO_REUSEPORT lets any process of this user join a port that is already listening, and the
kernel then spreads connections across all of them: two different models behind one
address. So the runtime shares its public port only with other versions of the same
deployment (same name, same state folder) during a rollout, and fails with a message naming
the port and its owner otherwise.

Who holds a port is a claim: one JSON file per host:port in a per-user runtime folder
($LLMOPS_PORT_CLAIMS, else $XDG_RUNTIME_DIR/llmops/ports, else <tmp>/llmops-<uid>/ports), not
in a state folder, since two checkouts of one repository have two. It names the deployment,
its state folder and the processes listening (pid and start time, so a recycled pid is not
mistaken for a live claim). The check, the bind and the claim's update happen under an
exclusive lock on the port's lock file, so two starts at once cannot both take a free port.
A claim whose processes are all gone is stale and ignored: a process killed with SIGKILL
leaves one behind, and nothing listens there any more.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from runners.errors import LlmopsError

CLAIMS_ENV = "LLMOPS_PORT_CLAIMS"
# The runtime's exit codes, here (not in server.py) so a supervisor reads them without
# loading the web framework: 4 means another holder took the public port.
EXIT_OK, EXIT_MODEL, EXIT_PORT = 0, 3, 4


class PortClaimError(LlmopsError):
    """The public port cannot be checked or claimed; the message says why and what to do."""


class PortInUse(PortClaimError):
    """The public port is held by something this deployment may not share it with."""


@dataclass(frozen=True)
class Owner:
    """Who may share a port: the versions of one deployment managed from one state folder."""

    deployment: str
    state_dir: str | None

    def describe(self) -> str:
        where = f" (state folder {self.state_dir})" if self.state_dir else ""
        return f"deployment {self.deployment}{where}"


@dataclass
class Claim:
    host: str
    port: int
    owner: Owner
    processes: list[tuple[int, str | None]] = field(default_factory=list)  # (pid, start)

    def live(self) -> list[int]:
        return [pid for pid, start in self.processes if is_alive(pid, start)]


def claims_dir() -> Path:
    """The per-user folder of claims, created private to this user."""
    given = os.environ.get(CLAIMS_ENV)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if given:
        folder = Path(given)
    elif runtime and Path(runtime).is_dir():
        folder = Path(runtime) / "llmops" / "ports"
    else:
        # A shared temp folder: <tmp>/llmops-<uid> must be ours, or its claims are not.
        mine = Path(tempfile.gettempdir()) / f"llmops-{os.getuid()}"
        with contextlib.suppress(FileExistsError):
            mine.mkdir(mode=0o700)
        if mine.is_symlink() or mine.stat().st_uid != os.getuid():
            raise PortClaimError(
                f"{mine} belongs to another user; set {CLAIMS_ENV} to a folder of your own"
            )
        folder = mine / "ports"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as err:
        raise PortClaimError(
            f"cannot create the port claims folder {folder}: {err.strerror}; "
            f"set {CLAIMS_ENV} to a folder of your own"
        ) from None
    return folder


def _key(host: str, port: int) -> str:
    return f"{host.replace(':', '_')}-{port}"


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks (/proc/<pid>/stat field 22); None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 and fields[0] != "Z" else None


def is_alive(pid: int, start: str | None) -> bool:
    """The same process as when it claimed: alive, not a zombie, same start time."""
    if Path("/proc/self/stat").exists():
        now = process_start(pid)
        return now is not None and (start is None or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_claim(host: str, port: int) -> Claim | None:
    path = claims_dir() / f"{_key(host, port)}.json"
    try:
        data = json.loads(path.read_text())
        return Claim(
            host=str(data["host"]),
            port=int(data["port"]),
            owner=Owner(str(data["deployment"]), data.get("state_dir")),
            processes=[(int(p["pid"]), p.get("start")) for p in data["processes"]],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no claim, or an unreadable one: the same as nobody known


def live_claim(host: str, port: int) -> Claim | None:
    """The port's claim if one of its processes still runs; stale claims are None."""
    claim = read_claim(host, port)
    return claim if claim is not None and claim.live() else None


def write_claim(claim: Claim | None, host: str, port: int) -> None:
    path = claims_dir() / f"{_key(host, port)}.json"
    if claim is None or not claim.processes:
        path.unlink(missing_ok=True)
        return
    data = {
        "host": claim.host,
        "port": claim.port,
        "deployment": claim.owner.deployment,
        "state_dir": claim.owner.state_dir,
        "processes": [{"pid": pid, "start": start} for pid, start in claim.processes],
        "updated_at": time.time(),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(host: str, port: int) -> Iterator[None]:
    """Exclusive, between processes, for checking and changing one port's claim."""
    path = claims_dir() / f"{_key(host, port)}.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def in_use(host: str, port: int) -> bool:
    """Something listens on (or holds) host:port: a bind without SO_REUSEPORT fails.

    SO_REUSEADDR only lets a port in TIME_WAIT be reused; a listening socket, with or
    without SO_REUSEPORT, still makes this bind fail with EADDRINUSE.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            return err.errno == errno.EADDRINUSE
    return False


def listener_pids(port: int) -> list[int]:
    """Pids of this user's processes listening on `port` (Linux /proc; best effort)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) > 9 and parts[3] == "0A" and int(parts[1].split(":")[1], 16) == port:
                    inodes.add(f"socket:[{parts[9]}]")
    found: list[int] = []
    if not inodes:
        return found
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        found.append(int(proc.name))
                        break
    return sorted(found)


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    text = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    return text if len(text) <= 60 else text[:57] + "..."


def conflict_message(host: str, port: int, owner: Owner, claim: Claim | None) -> str:
    """What holds the port, as far as llmops knows, and what to do about it."""
    if claim is not None:
        pids = ", ".join(str(pid) for pid in claim.live())
        held = f"deployment {claim.owner.deployment} ("
        if claim.owner.state_dir:
            held += f"state folder {claim.owner.state_dir}, "
        held += f"pid {pids})"
        if claim.owner.deployment == owner.deployment and owner.state_dir:
            held += f"; this deployment's state folder is {owner.state_dir}"
        other = "the other deployment"
    else:
        pids = listener_pids(port)
        if pids:
            shown = "; ".join(
                f"pid {pid}" + (f": {_command(pid)}" if _command(pid) else "") for pid in pids
            )
            held = f"another program ({shown}), not an llmops deployment"
        else:
            held = "another program, not an llmops deployment ('ss -ltnp' shows which)"
        other = "that program"
    return (
        f"port {host}:{port} is already in use by {held}. A port is shared only between "
        f"versions of one deployment during a rollout: set another port in Deployment "
        f"{owner.deployment}'s spec, or stop {other}"
    )


def check(host: str, port: int, owner: Owner) -> None:
    """PortInUse unless host:port is free or held by `owner`'s live processes."""
    if not in_use(host, port):
        return
    claim = live_claim(host, port)
    if claim is not None and claim.owner == owner:
        return
    raise PortInUse(conflict_message(host, port, owner, claim))


def adopt(host: str, port: int, owner: Owner, pid: int) -> None:
    """Record `pid` as holding the port for `owner` when no live claim says otherwise.

    A runtime started before claims existed serves the port without one: the controller,
    which knows it from the state folder, records it so its next version may take over.
    """
    with locked(host, port):
        if live_claim(host, port) is None and is_alive(pid, None):
            write_claim(Claim(host, port, owner, [(pid, process_start(pid))]), host, port)


def bind_shared(
    host: str, port: int, owner: Owner, bind: Callable[[], socket.socket]
) -> socket.socket:
    """Check, bind (with `bind`, which sets SO_REUSEPORT) and claim, all under the lock."""
    with locked(host, port):
        claim = live_claim(host, port)
        if in_use(host, port):
            if claim is None or claim.owner != owner:
                raise PortInUse(conflict_message(host, port, owner, claim))
        else:
            claim = None  # nothing listens: whatever the claim says is over
        sock = bind()
        pid = os.getpid()
        processes = [(p, s) for p, s in (claim.processes if claim else []) if is_alive(p, s)]
        processes.append((pid, process_start(pid)))
        write_claim(Claim(host, port, owner, processes), host, port)
    return sock


def release(host: str, port: int, pid: int | None = None) -> None:
    """Drop this process (and dead ones) from the port's claim; the last one removes it."""
    pid = os.getpid() if pid is None else pid
    with locked(host, port):
        claim = read_claim(host, port)
        if claim is None:
            return
        claim.processes = [(p, s) for p, s in claim.processes if p != pid and is_alive(p, s)]
        write_claim(claim, host, port)
