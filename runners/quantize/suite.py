"""Runner `quantize`, suite gate: the GGUF served by the llama.cpp backend for an EvalSuite run
over the runtime's API, and the gates its paired comparison with the source version must meet.

Default gates, one per compared metric: a perplexity at most `max_perplexity_increase` worse
(relative, on the point estimate: `max_drop` of that share of the source's value), every
other per-sample metric non-inferior within `margin` (the worse end of the difference's
interval). Latency and throughput are measured per task, not per sample: not gated.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runners.deploy.local import free_port, start, stop_pid, wait_ready
from runners.evaluate.compare import MetricComparison
from runners.evaluate.metrics import PERPLEXITIES

READY_TIMEOUT_S = 300.0


@contextmanager
def serving_gguf(artifact: Path, name: str, folder: Path, concurrency: int = 4) -> Iterator[str]:
    """The GGUF served by `python -m runners.serve` with the llama-cpp backend on a free
    loopback port, without a key, for as long as the block runs; yields the API root (/v1)."""
    port = free_port()
    config = {
        "name": name,
        "model_version": f"{name} (quality gate)",
        "model_dir": str(artifact.parent),
        "backend": "llama-cpp",
        "gguf_path": artifact.name,
        "host": "127.0.0.1",
        "port": port,
        "limits": {"max_concurrency": concurrency, "max_queue": 64, "timeout_s": 600},
    }
    process, state = start(name, config["model_version"], config, folder, {}, "")
    try:
        wait_ready(process, state, READY_TIMEOUT_S)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_pid(process.pid)
        if process.poll() is None:
            process.kill()
        process.wait()


def default_gates(
    comparisons: Sequence[MetricComparison], max_perplexity_increase: float, margin: float
) -> list[dict[str, Any]]:
    """The gates of runners/evaluate/compare.py's judge_gates for each compared metric."""
    gates: list[dict[str, Any]] = []
    for comparison in comparisons:
        if comparison.metric.split("/")[-1] in PERPLEXITIES:
            allowed = max_perplexity_increase * comparison.baseline
            gates.append({"metric": comparison.metric, "max_drop": allowed})
        else:
            gates.append({"metric": comparison.metric, "non_inferiority_margin": margin})
    return gates
