"""Builds the golden plan cases: each a spec repository, its observed lock and no expectation.

Run `python -m tests.golden.plan.build_cases` to (re)write the case folders; then
`UPDATE_GOLDEN=1 pytest tests/golden` writes expected.json, to be reviewed in the diff.
Each case's lock is what apply would have recorded for the 'before' specs.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from controller.load.desired import load_desired
from controller.state.lockfile import lock_from_desired, write_lock
from tests.conftest import MINIMAL_SPECS, write_tree

HERE = Path(__file__).parent / "cases"

PIPELINE = """
apiVersion: llmops/v1
kind: Pipeline
metadata: {name: retrain}
spec:
  trigger: {min_new_rows: 100}
  steps:
    - {step: update_dataset, dataset: faq}
    - {step: retrain, experiment: exp}
"""

BASE = {**MINIMAL_SPECS, "specs/pipelines/retrain.yaml": PIPELINE}


def changed(**edits: tuple[str, str, str]) -> dict[str, str]:
    """Copy of BASE with text replacements: file=(old, new)."""
    tree = dict(BASE)
    for _, (file, old, new) in edits.items():
        assert old in tree[file], (file, old)
        tree[file] = tree[file].replace(old, new)
    return tree


CASES: dict[str, tuple[dict[str, str] | None, dict[str, str]]] = {
    # name: (specs the lock was made from, or None for no lock; specs now)
    "no-lock": (None, BASE),
    "in-sync": (BASE, BASE),
    "hyperparameter-of-one-variant": (
        BASE,
        changed(r=("specs/experiments/exp.yaml", "training.lora.r: 16", "training.lora.r: 32")),
    ),
    "shared-hyperparameter": (
        BASE,
        changed(
            lr=("specs/experiments/exp.yaml", "learning_rate: 2.0e-4", "learning_rate: 1.0e-4")
        ),
    ),
    "data-file-changed": (
        BASE,
        {**BASE, "data/faq.jsonl": BASE["data/faq.jsonl"] + '{"q": "New?", "a": "Yes."}\n'},
    ),
    "gate-changed": (
        BASE,
        changed(g=("specs/evals/suite.yaml", "max_drop: 0.02", "max_drop: 0.05")),
    ),
    "variant-added": (
        BASE,
        changed(
            v=(
                "specs/experiments/exp.yaml",
                "r16: {training.lora.r: 16}",
                "r16: {training.lora.r: 16}\n            fast: {training.learning_rate: 1.0e-3}",
            )
        ),
    ),
    "deployment-removed": (
        BASE,
        {k: v for k, v in BASE.items() if k != "specs/deployments/assistant.yaml"}
        | {"specs/pipelines/retrain.yaml": PIPELINE},
    ),
    "deployment-scaled": (
        BASE,
        changed(
            d=(
                "specs/deployments/assistant.yaml",
                "smoke_suite: suite",
                "smoke_suite: suite\n          limits: {max_concurrency: 8}",
            )
        ),
    ),
}


def build() -> None:
    for name, (before, after) in CASES.items():
        folder = HERE / name
        shutil.rmtree(folder, ignore_errors=True)
        write_tree(folder, after)
        if before is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            old = write_tree(Path(tmp), before)
            loaded = load_desired(old)
            assert loaded.desired is not None, [d.render() for d in loaded.diagnostics]
            write_lock(folder / "llmops.lock", lock_from_desired(loaded.desired))
        print(f"wrote {folder}")


if __name__ == "__main__":
    build()
