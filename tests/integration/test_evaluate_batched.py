"""Continuous batching in evaluation gives lm-eval's own answers: the same suite through the
runner with lm-eval's static batches (generation_concurrency 0) and with the scheduler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runners.evaluate.run import EvalInputs, evaluate
from tests.conftest import PROJECT_ROOT

TASKS = [
    {
        "name": "chat",
        "type": "generate_until",
        "prompt": "{question}",
        "target": "answer",
        "metrics": ["exact_match", "rouge_l", "token_f1", "keyword_recall"],
        "generation": {"max_new_tokens": 24, "stop": ["\n\n", "."]},
    },
    {
        "name": "raw",
        "type": "generate_until",
        "prompt": "Q: {question}\nA:",
        "target": "answer",
        "chat_template": False,
        "metrics": ["rouge_l"],
        "generation": {"max_new_tokens": 12},
    },
]


def run(
    data: Path, model: Path, out: Path, concurrency: int
) -> tuple[dict[str, list[str]], dict[str, float]]:
    """Each task's answers in document order, and the suite's metrics."""
    summary = evaluate(
        EvalInputs(
            "batched",
            {"tasks": TASKS},
            {"chat": data, "raw": data},
            model,
            out,
            generation_concurrency=concurrency,
            report=lambda _: None,
        )
    )
    answers = {}
    for task in ("chat", "raw"):
        rows = [
            json.loads(line)
            for line in (out / f"samples-{task}.jsonl").read_text().split("\n")
            if line
        ]
        answers[task] = [row["output"] for row in sorted(rows, key=lambda r: r["id"])]
    return answers, summary["metrics"]


def test_continuous_batching_gives_lm_evals_answers(tiny_model: Path, tmp_path: Path) -> None:
    rows = (PROJECT_ROOT / "data/evals/support-faq-eval.jsonl").read_text().splitlines()[:20]
    data = tmp_path / "eval.jsonl"
    data.write_text("\n".join(rows) + "\n")
    static, static_metrics = run(data, tiny_model, tmp_path / "static", 0)
    batched, batched_metrics = run(data, tiny_model, tmp_path / "batched", 6)
    for task in ("chat", "raw"):
        assert batched[task] == static[task], task
        # Prompts of different lengths and answers that stop at different steps: the case
        # where rows join and leave a running batch.
        assert len({len(text) for text in static[task]}) > 3
    assert batched_metrics.keys() == static_metrics.keys()
    for name, value in static_metrics.items():
        assert batched_metrics[name] == pytest.approx(value, abs=1e-6), name
