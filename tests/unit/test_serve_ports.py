"""Port claims: a public port is shared only with the same deployment from the same state
folder; stale claims (dead processes) are ignored; two starts at once cannot both bind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from runners.deploy.local import free_port
from runners.errors import LlmopsError
from runners.serve import ports
from tests.conftest import PROJECT_ROOT

HOST = "127.0.0.1"
MINE = ports.Owner("assistant", "/a/.llmops/deployments/assistant")


@pytest.fixture(autouse=True)
def claims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "claims"
    monkeypatch.setenv(ports.CLAIMS_ENV, str(folder))
    return folder


def listening(port: int, reuse_port: bool = True) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((HOST, port))
    sock.listen()
    return sock


def bind_for(port: int) -> socket.socket:
    return listening(port)


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def held(tmp_path: Path) -> Iterator[int]:
    """A port bound through bind_shared by MINE in this process, released afterwards."""
    port = free_port()
    sock = ports.bind_shared(HOST, port, MINE, lambda: bind_for(port))
    try:
        yield port
    finally:
        sock.close()
        ports.release(HOST, port)


def test_a_free_port_is_claimed_and_released() -> None:
    port = free_port()
    ports.check(HOST, port, MINE)
    sock = ports.bind_shared(HOST, port, MINE, lambda: bind_for(port))
    claim = ports.live_claim(HOST, port)
    assert claim is not None and claim.owner == MINE and claim.live() == [os.getpid()]
    sock.close()
    ports.release(HOST, port)
    assert ports.read_claim(HOST, port) is None


def test_the_same_deployment_may_join(held: int) -> None:
    ports.check(HOST, held, MINE)
    joined = ports.bind_shared(HOST, held, MINE, lambda: bind_for(held))
    joined.close()


@pytest.mark.parametrize(
    ("other", "says"),
    [
        (
            ports.Owner("assistant", "/b/.llmops/deployments/assistant"),
            "this deployment's state folder is /b/.llmops/deployments/assistant",
        ),
        (ports.Owner("canary", "/a/.llmops/deployments/canary"), "or stop the other deployment"),
    ],
    ids=["another-state-folder", "another-deployment"],
)
def test_another_owner_is_refused_with_the_holder_named(
    held: int, other: ports.Owner, says: str
) -> None:
    with pytest.raises(ports.PortInUse) as refused:
        ports.check(HOST, held, other)
    message = str(refused.value)
    assert message.startswith(
        f"port 127.0.0.1:{held} is already in use by deployment assistant "
        f"(state folder /a/.llmops/deployments/assistant, pid {os.getpid()})"
    )
    assert says in message and f"Deployment {other.deployment}'s spec" in message
    assert isinstance(refused.value, LlmopsError)  # the CLI prints it, no traceback
    with pytest.raises(ports.PortInUse):
        ports.bind_shared(HOST, held, other, lambda: pytest.fail("must not bind"))


def test_a_stale_claim_does_not_hold_a_free_port(dead_pid: int) -> None:
    port = free_port()
    gone = ports.Owner("canary", "/b/.llmops/deployments/canary")
    ports.write_claim(ports.Claim(HOST, port, gone, [(dead_pid, None)]), HOST, port)
    assert ports.live_claim(HOST, port) is None
    ports.check(HOST, port, MINE)
    sock = ports.bind_shared(HOST, port, MINE, lambda: bind_for(port))
    sock.close()
    claim = ports.read_claim(HOST, port)
    assert claim is not None and claim.owner == MINE
    assert [pid for pid, _ in claim.processes] == [os.getpid()]


def test_a_stale_claim_of_mine_does_not_let_me_join_a_stranger(dead_pid: int) -> None:
    port = free_port()
    ports.write_claim(ports.Claim(HOST, port, MINE, [(dead_pid, None)]), HOST, port)
    with listening(port), pytest.raises(ports.PortInUse, match="another program .pid"):
        ports.check(HOST, port, MINE)


def test_a_recycled_pid_is_not_a_live_claim() -> None:
    port = free_port()
    ports.write_claim(ports.Claim(HOST, port, MINE, [(os.getpid(), "1")]), HOST, port)
    assert ports.live_claim(HOST, port) is None


def test_adopt_records_a_runtime_from_before_claims(held: int) -> None:
    ports.release(HOST, held)  # as if the process serving it had never claimed it
    assert ports.read_claim(HOST, held) is None
    ports.adopt(HOST, held, MINE, os.getpid())
    ports.check(HOST, held, MINE)
    # A live claim of someone else is never replaced.
    ports.adopt(HOST, held, ports.Owner("canary", None), os.getpid())
    claim = ports.read_claim(HOST, held)
    assert claim is not None and claim.owner == MINE


RACER = textwrap.dedent(
    """
    import socket, sys, time
    from runners.serve import ports

    port, name = int(sys.argv[1]), sys.argv[2]
    seen = ports.in_use
    # A slow check widens the window between it and the bind: without the lock both bind.
    ports.in_use = lambda host, port: (seen(host, port), time.sleep(0.3))[0]

    def bind():
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock

    sys.stdin.readline()  # both start together
    try:
        sock = ports.bind_shared("127.0.0.1", port, ports.Owner(name, "/" + name), bind)
    except ports.PortInUse:
        print("refused", flush=True)
        sys.exit(0)
    print("bound", flush=True)
    sys.stdin.readline()  # hold the port until told
    """
)


def test_two_owners_starting_at_once_never_both_bind() -> None:
    for _ in range(3):
        port = free_port()
        racers = [
            subprocess.Popen(
                [sys.executable, "-c", RACER, str(port), name],
                cwd=PROJECT_ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for name in ("one", "two")
        ]
        for racer in racers:
            assert racer.stdin is not None
            racer.stdin.write("go\n")
            racer.stdin.flush()
        said = sorted(racer.stdout.readline().strip() for racer in racers if racer.stdout)
        for racer in racers:
            racer.communicate("done\n", timeout=30)
        assert said == ["bound", "refused"]
