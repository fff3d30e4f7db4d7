"""Runner `deploy`, target local: start, check, switch and stop managed serving processes.

A deployment's processes listen on a private port each and share the public port with
SO_REUSEPORT, which the runtime binds only once its model is loaded and its smoke check
passed. A rollout starts the new version beside the old one, checks it on its private
port, stops the old one (which finishes its in-flight requests) and checks the public
port; if that last check fails the previous version is started again (rolled back).
State (pid, ports, version, config) is one JSON file per deployment, written atomically.

The public port is shared only between versions of the same deployment managed from the
same state folder (runners/serve/ports.py keeps who holds it in a per-user claim): before
starting anything, a rollout fails with a message naming the port and its holder when
another deployment, another state folder or any other program listens there, and the
runtime checks again, under a lock, when it binds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runners.deploy import environment
from runners.deploy.release import DeployError
from runners.serve import ports
from runners.serve.ports import EXIT_PORT

STATE_FILE = "state.json"
READY_PATH = "/v2/health/ready"


@dataclass
class ProcessState:
    name: str
    version: str
    pid: int
    port: int
    public_port: int
    config_digest: str
    config_path: str
    log_path: str
    started_at: float

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.public_port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_state(folder: Path) -> ProcessState | None:
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    try:
        return ProcessState(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None  # unreadable state is the same as no managed process


def write_state(folder: Path, state: ProcessState | None) -> None:
    path = folder / STATE_FILE
    if state is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps(asdict(state), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def is_serving_process(pid: int) -> bool:
    """Alive and ours: a recycled pid running something else is never signalled."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if b"runners.serve" not in cmdline:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie is not serving


def is_ready(port: int, timeout: float = 2.0) -> bool:
    import httpx

    try:
        response = httpx.get(f"http://127.0.0.1:{port}{READY_PATH}", timeout=timeout)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def start(
    name: str,
    version: str,
    config: dict[str, Any],
    folder: Path,
    env: dict[str, str],
    config_digest: str,
) -> tuple[subprocess.Popen[bytes], ProcessState]:
    """Start `python -m runners.serve` detached from this process (it outlives apply).

    It sees a minimal environment plus `env` (its key under its own variable): it runs model
    code for as long as it serves, so apply's tokens and other keys never reach it."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    config_path = folder / f"config-{stamp}-{config['port']}.json"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    log_path = folder / f"serve-{stamp}-{config['port']}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "runners.serve", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment.minimal(env),
            start_new_session=True,  # Ctrl-C on apply must not stop the served model
        )
    state = ProcessState(
        name=name,
        version=version,
        pid=process.pid,
        port=int(config["port"]),
        public_port=int(config.get("public_port") or config["port"]),
        config_digest=config_digest,
        config_path=str(config_path),
        log_path=str(log_path),
        started_at=time.time(),
    )
    return process, state


def log_tail(path: str, lines: int = 8) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(
    process: subprocess.Popen[bytes],
    state: ProcessState,
    timeout_s: float,
    tick: Callable[[float], None] | None = None,
) -> None:
    """Until the runtime reports ready on its private port; DeployError if it exits or stalls."""
    started = time.monotonic()
    while True:
        code = process.poll()
        if code == EXIT_PORT:  # another holder took the public port after our own check
            said = [line for line in log_tail(state.log_path, 20).splitlines() if "in use" in line]
            reason = said[-1].split("): ", 1)[-1] if said else "its public port is in use"
            raise DeployError(f"{state.name}: {state.version} did not start: {reason}")
        if code is not None:
            raise DeployError(
                f"{state.name}: {state.version} exited with code {code} before it was ready "
                f"(log {state.log_path}):\n{log_tail(state.log_path)}"
            )
        if is_ready(state.port):
            return
        elapsed = time.monotonic() - started
        if elapsed > timeout_s:
            stop_pid(process.pid)
            raise DeployError(
                f"{state.name}: {state.version} was not ready after {timeout_s:.0f} s "
                f"(log {state.log_path}):\n{log_tail(state.log_path)}"
            )
        if tick:
            tick(elapsed)
        time.sleep(0.5)


def stop_pid(pid: int, grace_s: float = 30.0) -> None:
    """SIGTERM (the runtime drains in-flight requests), then SIGKILL after the grace period."""
    if not is_serving_process(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not is_serving_process(pid):
            _reap(pid)
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    # Not our child when an earlier apply started it: init reaps it then.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def current(folder: Path) -> ProcessState | None:
    """The managed process, if it is still running."""
    state = read_state(folder)
    if state is None or not is_serving_process(state.pid):
        return None
    return state


def rollout(
    name: str,
    version: str,
    config: dict[str, Any],
    folder: Path,
    env: dict[str, str],
    config_digest: str,
    ready_timeout_s: float = 600.0,
    check: Callable[[int], str | None] | None = None,
    tick: Callable[[float], None] | None = None,
    key: str | None = None,
) -> tuple[ProcessState, str]:
    """Start the new version, check it, switch, stop the old one; roll back on failure.

    `config` is the runtime's config without ports; `check(port)` returns a problem or None.
    When only the served adapters differ, the running process loads and unloads them in
    place (`key` authorises those calls) and keeps serving the others throughout.
    Returns the state now serving and what happened ("unchanged", "started", "replaced",
    "adapters changed").
    """
    old = current(folder)
    if old is not None and old.config_digest == config_digest and is_ready(old.port):
        return old, "unchanged"
    if old is not None and is_ready(old.port):
        adapted = change_adapters(old, config, config_digest, key)
        if adapted is not None:
            write_state(folder, adapted)
            return adapted, "adapters changed"
    public_port = int(config["public_port"])
    host = str(config.get("host") or "127.0.0.1")
    owner = port_owner(name, folder)
    if old is not None and old.public_port == public_port:
        ports.adopt(host, public_port, owner, old.pid)  # serving since before claims
    try:
        ports.check(host, public_port, owner)
    except ports.PortClaimError as err:
        raise DeployError(f"{name}: cannot start {version}: {err}") from None
    new_config = {**config, "port": free_port(), "state_dir": owner.state_dir}
    process, new = start(name, version, new_config, folder, env, config_digest)
    wait_ready(process, new, ready_timeout_s, tick)
    problem = check(new.port) if check else None
    if problem:
        stop_pid(new.pid)
        raise DeployError(
            f"{name}: {version} failed its check on port {new.port}: {problem}; "
            + (f"{old.version} keeps serving" if old else "nothing was serving before")
        )
    if old is not None:
        stop_pid(old.pid)
    problem = None if is_ready(public_port) else f"port {public_port} does not answer"
    if problem is None and check:
        problem = check(public_port)
    if problem:
        stop_pid(new.pid)
        if old is not None:
            previous = json.loads(Path(old.config_path).read_text())
            previous["port"] = free_port()
            previous["state_dir"] = owner.state_dir  # configs from before port claims
            back, restored = start(name, old.version, previous, folder, env, old.config_digest)
            wait_ready(back, restored, ready_timeout_s, tick)
            write_state(folder, restored)
            raise DeployError(
                f"{name}: {version} failed its check after the switch ({problem}); "
                f"rolled back to {old.version}"
            )
        write_state(folder, None)
        raise DeployError(f"{name}: {version} failed its check after starting ({problem})")
    write_state(folder, new)
    return new, "replaced" if old else "started"


def change_adapters(
    old: ProcessState, config: dict[str, Any], config_digest: str, key: str | None
) -> ProcessState | None:
    """Load and unload adapters in the running process when nothing else in its config
    changed (runners/serve/routes.py /v2/adapters); None when a restart is needed.
    New adapters load before old ones leave; a new version of one adapter replaces it in
    place (PUT: it loads beside the old one, then its name switches to it; no request for it
    answers 404 in between, and the others never notice)."""
    import httpx

    try:
        previous = json.loads(Path(old.config_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kept = {k: v for k, v in previous.items() if k not in ("port", "state_dir", "adapters")}
    if kept != {k: v for k, v in config.items() if k != "adapters"}:
        return None
    before = {a["name"]: a for a in previous.get("adapters", [])}
    after = {a["name"]: a for a in config.get("adapters", [])}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = f"http://127.0.0.1:{old.port}/v2/adapters"

    def call(method: str, name: str, body: dict[str, Any] | None = None) -> None:
        try:
            response = httpx.request(
                method, f"{url}/{name}", json=body, headers=headers, timeout=600
            )
        except httpx.HTTPError as err:
            raise DeployError(f"{old.name}: adapter {name}: {method} failed: {err}") from None
        if response.status_code != 200:
            raise DeployError(
                f"{old.name}: adapter {name}: {method} answered {response.status_code}: "
                f"{response.text[:300]}; {old.version} keeps serving the adapters it had"
            )

    for name, adapter in after.items():
        if name not in before:
            call("POST", name, {"version": adapter["version"], "dir": adapter["dir"]})
    for name, adapter in after.items():
        if name in before and adapter != before[name]:
            call("PUT", name, {"version": adapter["version"], "dir": adapter["dir"]})
    for name in before:
        if name not in after:
            call("DELETE", name)
    written = {**previous, "adapters": config.get("adapters", [])}
    if not written["adapters"]:
        del written["adapters"]
    text = json.dumps(written, indent=2, sort_keys=True) + "\n"
    Path(old.config_path).write_text(text, encoding="utf-8")
    return ProcessState(**{**asdict(old), "config_digest": config_digest})


def port_owner(name: str, folder: Path) -> ports.Owner:
    """Who may share the public port: this deployment, from this state folder."""
    return ports.Owner(name, str(folder.resolve()))


def stop(folder: Path) -> ProcessState | None:
    """Stop the managed process (if any) and forget it."""
    state = read_state(folder)
    if state is not None:
        stop_pid(state.pid)
    write_state(folder, None)
    return state
