"""The serving runtime under abuse: memory, throughput and latency of normal clients.

A tiny random Llama (tests/tiny.py) served for real on 127.0.0.1 (`python -m runners.serve`,
default limits except a queue deep enough for every client). 50 clients keep requests
going: most ask normally (half streamed, half not, 16 tokens), a few start a 64-token stream
and leave after 3 chunks. The server's RSS is sampled every second from /proc.

Phases, each `--seconds` long, after a warm-up: first the 50 clients alone (the baseline),
then the same 50 clients plus `--slow` slow-loris connections, each trickling a header byte
per second and reopened as soon as the server cuts it. Prints requests done, errors by
kind, p50/p99 latency of the normal clients per phase and the ratio of their throughput
with/without slow-loris, how long a slow-loris connection lived, RSS at start, after the
warm-up, after each phase and the maximum, and the growth from after the warm-up to the end.
Exits 1 when memory grew by `--bound` percent or more, or when no slow connection was cut.

    python benchmarks/serve_abuse.py [--seconds 60] [--clients 50] [--slow 16] [--bound 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/tiny.py builds the model

NAME = "abuse-bench"
READY_WAIT_S = 300  # importing torch and kserve on a loaded 2-core machine is slow
LEAVING_SHARE = 0.12  # of the clients: start a stream, read 3 chunks, hang up
MIB = 1024 * 1024
PROMPTS = [
    "How do I reset my password?",
    "Can I export my data?",
    "What does the Team plan cost?",
    "The capital of France is",
]


@dataclass
class Phase:
    """What the clients of one phase saw."""

    name: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # normal requests answered in full
    errors: Counter[str] = field(default_factory=Counter)
    left: int = 0  # streams the leaving clients hung up on, as planned
    slow_cut: int = 0  # slow-loris connections the server closed
    slow_408: int = 0  # ... with a 408 answer
    slow_lived: list[float] = field(default_factory=list)
    rss_end: int = 0

    @property
    def done(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else float("nan")


def percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def rss(pid: int) -> int:
    """Resident set size of `pid` in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(folder: Path, clients: int) -> tuple[subprocess.Popen[bytes], str, Path]:
    from transformers.utils import logging as hf_logging

    from tests.tiny import make_tiny_llama

    hf_logging.disable_progress_bar()
    model = make_tiny_llama(folder / "model")
    port = free_port()
    cfg = {
        "name": NAME,
        "model_version": f"{NAME}@1",
        "model_dir": str(model),
        "host": "127.0.0.1",
        "port": port,
        # Defaults, except a queue with room for every client: 429s would measure the
        # queue, not the abuse.
        "limits": {"max_queue": clients + 16, "max_tokens": 64},
    }
    (folder / "serve.json").write_text(json.dumps(cfg))
    log = folder / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runners.serve", str(folder / "serve.json")],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    give_up = time.monotonic() + READY_WAIT_S
    while time.monotonic() < give_up:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise SystemExit(f"the server exited {proc.returncode} before it was ready:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                return proc, url, log
        time.sleep(0.3)
    stop_server(proc)
    raise SystemExit(f"the server was not ready after {READY_WAIT_S} s; see {log}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def body(rng: random.Random, max_tokens: int, stream: bool, **extra: object) -> dict[str, object]:
    return {
        "model": NAME,
        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
        "max_tokens": max_tokens,
        "stream": stream,
        **extra,
    }


async def normal_client(client: httpx.AsyncClient, seed: int, until: float, phase: Phase) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        stream = rng.random() < 0.5
        start = time.monotonic()
        try:
            if stream:
                async with client.stream(
                    "POST", "/v1/chat/completions", json=body(rng, 16, True)
                ) as reply:
                    text = (await reply.aread()).decode()
                    status = reply.status_code
                    ok = status == 200 and text.rstrip().endswith("data: [DONE]")
            else:
                reply = await client.post("/v1/chat/completions", json=body(rng, 16, False))
                status = reply.status_code
                ok = status == 200 and bool(reply.json()["choices"])
        except httpx.TimeoutException:
            phase.errors["client timeout"] += 1
            continue
        except httpx.HTTPError as err:
            phase.errors[f"transport: {type(err).__name__}"] += 1
            continue
        if ok:
            phase.latencies.append(time.monotonic() - start)
        else:
            phase.errors[f"HTTP {status}" if status != 200 else "stream cut short"] += 1


async def leaving_client(client: httpx.AsyncClient, seed: int, until: float, phase: Phase) -> None:
    """Starts a long stream and hangs up after 3 chunks, again and again."""
    rng = random.Random(seed)
    while time.monotonic() < until:
        try:
            async with client.stream(
                "POST", "/v1/chat/completions", json=body(rng, 64, True, min_tokens=64)
            ) as reply:
                if reply.status_code != 200:
                    phase.errors[f"leaving client: HTTP {reply.status_code}"] += 1
                    await reply.aread()
                    continue
                chunks = 0
                async for line in reply.aiter_lines():
                    chunks += line.startswith("data: {")
                    if chunks >= 3:
                        break
            phase.left += 1  # leaving the block unread closes the connection
        except httpx.HTTPError as err:
            phase.errors[f"leaving client: {type(err).__name__}"] += 1


async def slow_loris(port: int, until: float, phase: Phase) -> None:
    """One connection trickling a header byte a second; reopened whenever it is cut."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            phase.errors["slow-loris: connect refused"] += 1
            await asyncio.sleep(1)
            continue
        opened = time.monotonic()
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        cut, data = False, b""
        try:
            while time.monotonic() < until:
                try:
                    # Cancelling a pending read loses nothing: bytes stay buffered.
                    data = await asyncio.wait_for(reader.read(4096), timeout=1.0)
                    cut = True  # the server answered or closed: either way it cut us
                    break
                except TimeoutError:
                    writer.write(b"a")
                    await writer.drain()
        except OSError:
            cut = True  # it closed while we wrote
        if cut:
            phase.slow_cut += 1
            phase.slow_408 += data.startswith(b"HTTP/1.1 408 ")
            phase.slow_lived.append(time.monotonic() - opened)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def sample_rss(pid: int, samples: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(rss(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)


async def run_phase(
    url: str, pid: int, phase: Phase, clients: int, slow: int, seconds: float, seed: int
) -> None:
    leaving = max(1, round(clients * LEAVING_SHARE))
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients)
    port = int(url.rsplit(":", 1)[1])
    start = time.monotonic()
    until = start + seconds
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        tasks = [
            normal_client(client, seed * 1000 + i, until, phase) for i in range(clients - leaving)
        ]
        tasks += [
            leaving_client(client, seed * 1000 + 500 + i, until, phase) for i in range(leaving)
        ]
        tasks += [slow_loris(port, until, phase) for _ in range(slow)]
        await asyncio.gather(*tasks)
    phase.seconds = time.monotonic() - start
    phase.rss_end = rss(pid)


def mib(value: float) -> str:
    return f"{value / MIB:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="length of each phase")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--slow", type=int, default=16, help="slow-loris connections")
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--bound", type=float, default=5.0, help="RSS growth bound, percent")
    args = parser.parse_args()
    if args.seconds <= 0 or args.clients < 2 or args.slow < 1 or args.warmup < 0:
        parser.error("--seconds and --warmup must be positive, --clients >= 2, --slow >= 1")

    with tempfile.TemporaryDirectory(prefix="llmops-abuse-") as tmp:
        proc, url, log = start_server(Path(tmp), args.clients)
        try:
            return asyncio.run(measure(url, proc.pid, args, log))
        finally:
            stop_server(proc)


async def measure(url: str, pid: int, args: argparse.Namespace, log: Path) -> int:
    samples: list[int] = []
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(sample_rss(pid, samples, stop))
    rss_start = rss(pid)
    warm = Phase("warm-up")
    await run_phase(url, pid, warm, args.clients, 0, args.warmup, seed=1)
    rss_warm = rss(pid)
    print(
        f"server ready, RSS {mib(rss_start)} MiB; warm-up {args.warmup:g} s: {warm.done} "
        f"requests, RSS {mib(rss_warm)} MiB",
        flush=True,
    )
    base = Phase("without slow-loris")
    await run_phase(url, pid, base, args.clients, 0, args.seconds, seed=2)
    print(f"phase 1 done: {base.done} requests", flush=True)
    abuse = Phase(f"with {args.slow} slow-loris")
    await run_phase(url, pid, abuse, args.clients, args.slow, args.seconds, seed=3)
    stop.set()
    await sampler
    rss_end = rss(pid)
    peak = max([*samples, rss_end])
    traceback = "Traceback" in log.read_text(errors="replace")

    leaving = max(1, round(args.clients * LEAVING_SHARE))
    print()
    print(
        f"serve_abuse: tiny Llama, {args.clients} clients ({args.clients - leaving} normal: "
        f"half streamed, 16 tokens; {leaving} leave each 64-token stream after 3 chunks), "
        f"{args.seconds:g} s per phase, {os.cpu_count()} cores"
    )
    print()
    header = f"{'phase':<24}{'done':>7}{'req/s':>8}{'p50 s':>8}{'p99 s':>8}{'left':>6}  errors"
    print(header)
    print("-" * len(header))
    for phase in (base, abuse):
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(phase.errors.items())) or "none"
        print(
            f"{phase.name:<24}{phase.done:>7}{phase.rate:>8.1f}"
            f"{percentile(phase.latencies, 50):>8.3f}{percentile(phase.latencies, 99):>8.3f}"
            f"{phase.left:>6}  {errors}"
        )
    ratio = abuse.rate / base.rate if base.rate else float("nan")
    p99_ratio = percentile(abuse.latencies, 99) / percentile(base.latencies, 99)
    print()
    print(
        f"normal clients with/without slow-loris: throughput x{ratio:.2f}, p99 latency "
        f"x{p99_ratio:.2f}"
    )
    lived = abuse.slow_lived
    print(
        f"slow-loris connections cut by the server: {abuse.slow_cut} ({abuse.slow_408} with "
        f"408), each lived {percentile(lived, 50):.1f} s median, {max(lived, default=0):.1f} s "
        "max (header_timeout_s 10)"
    )
    print()
    print(f"{'server RSS':<28}{'MiB':>8}")
    for label, value in (
        ("at start (model loaded)", rss_start),
        (f"after warm-up ({args.warmup:g} s)", rss_warm),
        ("after phase 1", base.rss_end),
        ("at end (after phase 2)", rss_end),
        ("max (sampled every 1 s)", peak),
    ):
        print(f"{label:<28}{mib(value):>8}")
    growth = rss_end - rss_warm
    percent = 100 * growth / rss_warm if rss_warm else float("nan")
    print(
        f"growth after warm-up to end: {growth / MIB:+.1f} MiB ({percent:+.1f}%) over "
        f"{2 * args.seconds:g} s; phase 1 alone {(base.rss_end - rss_warm) / MIB:+.1f} MiB, "
        f"phase 2 alone {(rss_end - base.rss_end) / MIB:+.1f} MiB"
    )
    flat = percent < args.bound
    verdict = "memory flat" if flat else "MEMORY GROWING"
    print(
        f"verdict: {verdict} (growth {percent:+.1f}%, bound {args.bound:g}%)"
        + ("; server log has a traceback" if traceback else "; no traceback in the server log")
    )
    if abuse.slow_cut == 0:
        print("FAILED: the server never cut a slow-loris connection")
    return 0 if flat and abuse.slow_cut and not traceback else 1


if __name__ == "__main__":
    sys.exit(main())
