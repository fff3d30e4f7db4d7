"""A second `llmops models pull` of a stored model, against the CLI's own start-up.

Baseline: `llmops version` (interpreter start, imports, nothing else). The no-op pull adds
loading the specs, opening the registry and checking the stored files by size.

    python benchmarks/pull_noop.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "controller.cli.main", *args],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOPS_")}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        for folder in ("specs", "data"):
            shutil.copytree(ROOT / folder, repo / folder)
        first = timed(["models", "pull", "smollm2-135m-instruct"], repo, env)
        baseline = [timed(["version"], repo, env) for _ in range(args.repeat)]
        noop = [
            timed(["models", "pull", "smollm2-135m-instruct"], repo, env)
            for _ in range(args.repeat)
        ]
    b, n = statistics.median(baseline), statistics.median(noop)
    print(f"first pull (GGUF -> safetensors, stored): {first:.2f} s")
    print(f"baseline `llmops version` (median of {args.repeat}): {b:.2f} s")
    print(f"second `llmops models pull` (median of {args.repeat}): {n:.2f} s")
    print(f"ratio no-op pull / CLI start-up: {n / b:.2f}x")


if __name__ == "__main__":
    main()
