"""Integration fixtures: a real PostgreSQL server the suite starts itself."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("pg_ctl")
    return Path(which).parent if which else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """Start PostgreSQL (Debian's package) on 127.0.0.1 for this test session.

    As root the server runs as the 'postgres' user, since PostgreSQL refuses to run as root.
    """
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip(
            "PostgreSQL is not installed: 'apt-get install postgresql' (make test does "
            "this when it can)"
        )
    as_root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="llmops-pg-"))
    base.chmod(0o755)
    data, sockets = base / "data", base / "sock"
    sockets.mkdir()
    prefix: list[str] = []
    if as_root:
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
        shutil.chown(sockets, "postgres")
    port = _free_port()

    def run(*args: str) -> None:
        result = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}{result.stderr}")

    run(str(bindir / "initdb"), "-D", str(data), "-U", "llmops", "--auth=trust", "-E", "UTF8")
    run(
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(base / "log"),
        "-w",
        "-o",
        f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1",
        "start",
    )
    try:
        yield f"postgresql+psycopg://llmops@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a trained tokenizer and chat template, saved once."""
    from tests.tiny import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")
