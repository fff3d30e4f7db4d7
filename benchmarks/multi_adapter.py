"""Several LoRA adapters on one base in one serving process, against one adapter served alone.

Builds the tiny random llama of tests/tiny.py (wider with --hidden/--layers) and four LoRA
adapters on it with different random weights (so greedy answers differ), then, one runtime
process at a time (on a small machine no two may compete for the CPU):
  - each adapter served alone (its own process, merged in memory, as a one-version
    deployment serves it): every prompt's greedy answer, the reference;
  - adapter 1 alone again under load: 8 clients, each sending its requests one after
    another; output tokens/s (usage.completion_tokens) and the process's resident memory;
  - all four adapters in one process on the shared base: the same 8 clients spread over
    them (client i asks adapter i mod 4); tokens/s, resident memory, and every answer
    compared with that adapter's answer alone.
Prints the ratios against the targets (memory at most 1.2x, tokens/s at least 0.7x) and
exits 1 when an answer differs.

    python benchmarks/multi_adapter.py [--requests 8] [--max-tokens 32] [--hidden 32]
        [--layers 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.serving import config, running  # noqa: E402
from tests.tiny import make_random_adapter, make_tiny_llama  # noqa: E402

ADAPTERS = ["adapter-1", "adapter-2", "adapter-3", "adapter-4"]
CLIENTS = 8
PROMPTS = [
    "How do I reset my password?",
    "Can I export my data?",
    "What does the Team plan cost?",
    "Paris",
    "The capital of France is",
    "Write a haiku about the sea.",
    "Name two benefits of exercise.",
    "What is a GPU?",
]


def ask(url: str, model: str, prompt: str, max_tokens: int) -> tuple[str, int]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,  # every answer the same length: equal work on both sides
        "temperature": 0,
    }
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    response.raise_for_status()
    data = response.json()
    return str(data["choices"][0]["message"]["content"]), int(data["usage"]["completion_tokens"])


def load(
    url: str, models: list[str], requests: int, max_tokens: int
) -> tuple[float, list[tuple[str, str, str]]]:
    """8 clients, client i on models[i % len(models)], `requests` each one after another:
    (tokens/s, [(model, prompt, answer)])."""

    def client(index: int) -> tuple[int, list[tuple[str, str, str]]]:
        model = models[index % len(models)]
        tokens, answers = 0, []
        for turn in range(requests):
            prompt = PROMPTS[(index + turn) % len(PROMPTS)]
            text, used = ask(url, model, prompt, max_tokens)
            tokens += used
            answers.append((model, prompt, text))
        return tokens, answers

    ask(url, models[0], PROMPTS[0], max_tokens)  # warm-up
    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(client, range(CLIENTS)))
    wall = time.perf_counter() - start
    return sum(t for t, _ in results) / wall, [a for _, answers in results for a in answers]


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=32, help="the tiny model's width")
    parser.add_argument("--layers", type=int, default=2, help="the tiny model's depth")
    args = parser.parse_args()
    limits = {
        "max_concurrency": CLIENTS,
        "max_queue": CLIENTS,
        "max_tokens": args.max_tokens,
        "timeout_s": 600,
    }
    with tempfile.TemporaryDirectory(prefix="multi-adapter-") as folder:
        tmp = Path(folder)
        base = make_tiny_llama(tmp / "base", hidden=args.hidden, layers=args.layers)
        folders = {
            name: make_random_adapter(base, tmp / name, seed)
            for seed, name in enumerate(ADAPTERS, start=1)
        }
        weights = sum(f.stat().st_size for f in base.glob("*.safetensors"))
        print(f"base: hidden {args.hidden}, layers {args.layers}, weights {weights / 1e6:.1f} MB")
        reference: dict[tuple[str, str], str] = {}
        alone: dict[str, Any] = {}
        for name, path in folders.items():
            cfg = config(name, path, limits=limits)
            with running(cfg, tmp / f"alone-{name}") as runtime:
                for prompt in PROMPTS:
                    reference[name, prompt] = ask(runtime.url, name, prompt, args.max_tokens)[0]
                if name == ADAPTERS[0]:
                    tps, answers = load(runtime.url, [name], args.requests, args.max_tokens)
                    alone = {"tps": tps, "rss": rss_mb(runtime.proc.pid), "answers": answers}
        distinct = len({tuple(reference[n, p] for p in PROMPTS) for n in ADAPTERS})
        print(f"adapters whose greedy answers differ from each other: {distinct} of 4")
        served = [{"name": n, "version": f"{n}@1", "dir": str(p)} for n, p in folders.items()]
        cfg = config("base", base, limits=limits, adapters=served)
        with running(cfg, tmp / "multi") as runtime:
            tps, answers = load(runtime.url, ADAPTERS, args.requests, args.max_tokens)
            multi = {"tps": tps, "rss": rss_mb(runtime.proc.pid), "answers": answers}
    wrong = [(m, p, a) for m, p, a in multi["answers"] if a != reference[m, p]]
    wrong += [(m, p, a) for m, p, a in alone["answers"] if a != reference[m, p]]
    memory = multi["rss"] / alone["rss"]
    speed = multi["tps"] / alone["tps"]
    print(f"{CLIENTS} clients x {args.requests} requests, {args.max_tokens} tokens each, greedy")
    print(f"one adapter alone:        {alone['tps']:8.1f} tokens/s  RSS {alone['rss']:7.1f} MB")
    print(f"4 adapters, one process:  {multi['tps']:8.1f} tokens/s  RSS {multi['rss']:7.1f} MB")
    print(f"memory  {memory:.2f}x one model alone (target <= 1.2x): " + _ok(memory <= 1.2))
    print(f"speed   {speed:.2f}x one adapter alone (target >= 0.7x): " + _ok(speed >= 0.7))
    total = len(multi["answers"]) + len(alone["answers"])
    print(f"answers equal to the adapter alone: {total - len(wrong)} of {total}")
    for model, prompt, answer in wrong[:5]:
        print(f"  {model} {prompt!r}: {answer!r} != {reference[model, prompt]!r}")
    return 1 if wrong else 0


def _ok(passed: bool) -> str:
    return "ok" if passed else "MISSED"


if __name__ == "__main__":
    sys.exit(main())
