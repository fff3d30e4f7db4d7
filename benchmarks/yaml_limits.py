"""Hostile spec files against the loader and `llmops validate`: time and peak memory.

Each case is a one-file repository. "load s" and "load MB" are `load_specs` in this process
(wall time, tracemalloc peak); "cli s" and "cli MB" a fresh `llmops validate` process (wall
time, interpreter start-up and imports included, and its peak RSS from wait4). Baseline: an
ordinary spec of the bomb's byte size (a Model with labels). Each hostile case must fail
with a located diagnostic, loading in under 2 s and the CLI under 200 MB; the script exits
1 when one does not.

    python benchmarks/yaml_limits.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

BIN = Path(sys.executable).parent
ORDINARY = """apiVersion: llmops/v1
kind: Model
metadata:
  name: base
  labels: {{{labels}}}
spec:
  source: {{type: local, path: models/base}}
"""


def alias_bomb(levels: int = 9) -> str:
    """The 'billion laughs' in YAML: each level lists the previous one nine times."""
    lines = ["apiVersion: llmops/v1", "kind: Model", "metadata: {name: bomb}", "x0: &a0 [lol]"]
    for level in range(1, levels + 1):
        refs = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"x{level}: &a{level} [{refs}]")
    lines.append(f"spec: {{source: {{type: local, path: *a{levels}}}}}")
    return "\n".join(lines) + "\n"


def ordinary_like(size: int) -> str:
    labels, i = [], 0
    while len(ORDINARY.format(labels=", ".join(labels))) < size:
        labels.append(f"k{i}: v{i}")
        i += 1
    return ORDINARY.format(labels=", ".join(labels))


def deep(levels: int = 5000) -> str:
    return "apiVersion: llmops/v1\nkind: Model\nspec: " + "[" * levels + "]" * levels + "\n"


def many_documents(count: int = 20_000) -> str:
    return "---\n{}\n" * count


def huge(size: int = 64 * 1024 * 1024) -> str:
    return "apiVersion: llmops/v1\nkind: Model\ndescription: " + "a" * size + "\n"


def write_repo(root: Path, text: str) -> None:
    (root / "specs/models").mkdir(parents=True)
    (root / "specs/models/spec.yaml").write_text(text, encoding="utf-8")
    (root / "models/base").mkdir(parents=True)


def run_load(text: str) -> tuple[float, float, str]:
    """(seconds, tracemalloc peak MB, first diagnostic) of load_specs in this process."""
    from controller.load.loader import load_specs

    with tempfile.TemporaryDirectory(prefix="llmops-yaml-") as tmp:
        root = Path(tmp)
        write_repo(root, text)
        tracemalloc.start()
        start = time.perf_counter()
        result = load_specs(root)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
    first = result.diagnostics[0].render().splitlines()[0] if result.diagnostics else "valid"
    return seconds, peak, first


def run_validate(text: str) -> tuple[float, float, int]:
    """(seconds, peak RSS MB, exit code) of one `llmops validate` process."""
    with tempfile.TemporaryDirectory(prefix="llmops-yaml-") as tmp:
        root = Path(tmp)
        write_repo(root, text)
        env = {**os.environ, "LLMOPS_STATE_DIR": str(root / ".llmops"), "NO_COLOR": "1"}
        start = time.perf_counter()
        proc = subprocess.Popen(
            [str(BIN / "llmops"), "validate", "--root", str(root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        assert proc.stdout is not None
        proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss / 1024, proc.returncode


def main() -> int:
    bomb = alias_bomb()
    cases = [
        ("baseline: ordinary spec", ordinary_like(len(bomb)), False),
        ("alias bomb, 9 levels", bomb, True),
        ("nesting 5,000 deep", deep(), True),
        ("20,000 documents", many_documents(), True),
        ("64 MB file", huge(), True),
    ]
    failed = False
    print(
        f"{'case':<26} {'bytes':>10} {'load s':>7} {'load MB':>8} {'cli s':>6} {'cli MB':>7}"
        f" {'exit':>4}  diagnostic"
    )
    for name, text, hostile in cases:
        load_s, load_mb, line = run_load(text)
        cli_s, cli_mb, code = run_validate(text)
        print(
            f"{name:<26} {len(text):>10,} {load_s:>7.3f} {load_mb:>8.1f} {cli_s:>6.2f}"
            f" {cli_mb:>7.0f} {code:>4}  {line[:100]}"
        )
        located = line.startswith("specs/models/spec.yaml:")
        if hostile and (code != 2 or load_s > 2.0 or cli_mb > 200 or not located):
            failed = True
    print("hostile specs: " + ("FAIL (over 2 s / 200 MB, or not located)" if failed else "ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
