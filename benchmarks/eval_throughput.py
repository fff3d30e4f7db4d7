"""Evaluation throughput: llmops' evaluate runner against lm-eval called directly.

Same model, same data, same task types (multiple choice over 40 rows, rolling perplexity
over 60 rows, 10 generations); samples/s for each, and the ratio.

    python benchmarks/eval_throughput.py [--model PATH]

Without --model it uses SmolLM2-135M-Instruct from the registry (pulled by `make demo`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "data/evals/support-faq-eval.jsonl"
CHOICE = ROOT / "data/evals/support-faq-choice.jsonl"
TASKS = [
    {"name": "choice", "type": "multiple_choice", "target": "label", "choices": "choices",
     "metrics": ["accuracy"], "chat_template": False},
    {"name": "ppl", "type": "loglikelihood_rolling", "prompt": "{question}\n{answer}",
     "metrics": ["word_perplexity"]},
    {"name": "gen", "type": "generate_until", "metrics": ["exact_match"], "limit": 10,
     "generation": {"max_new_tokens": 24}, "chat_template": False},
]


def default_model() -> Path:
    from controller.workspace import open_registry

    registry = open_registry(ROOT)
    version = registry.find("smollm2-135m-instruct")
    if version is None:
        raise SystemExit("run 'make demo' (or llmops models pull) first, or pass --model")
    return registry.materialize(version)


def ours(model: Path, out: Path) -> tuple[float, int]:
    from runners.evaluate.run import EvalInputs, evaluate

    data = {"choice": CHOICE, "ppl": EVAL, "gen": EVAL}
    start = time.perf_counter()
    summary = evaluate(EvalInputs("bench", {"tasks": TASKS}, data, model, out,
                                  report=lambda _: None))
    return time.perf_counter() - start, sum(t["samples"] for t in summary["tasks"].values())


def direct(model: Path, folder: Path) -> tuple[float, int]:
    import yaml
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from runners.evaluate.run import _limited, task_yaml

    folder.mkdir(parents=True)
    names = []
    data = {"choice": CHOICE, "ppl": EVAL, "gen": EVAL}
    for task in TASKS:
        spec = task_yaml("direct", task, _limited(data[task["name"]], task.get("limit"), folder))
        (folder / f"{spec['task']}.yaml").write_text(yaml.safe_dump(spec))
        names.append(spec["task"])
    start = time.perf_counter()
    results = simple_evaluate(model="hf", model_args=f"pretrained={model},dtype=float32",
                              tasks=names, task_manager=TaskManager(include_path=str(folder)),
                              device="cpu", batch_size=8, bootstrap_iters=0)
    samples = sum(int(results["results"][n]["sample_len"]) for n in names)
    return time.perf_counter() - start, samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path)
    args = parser.parse_args()
    model = args.model or default_model()
    with tempfile.TemporaryDirectory() as tmp:
        base_s, base_n = direct(model, Path(tmp) / "direct")
        ours_s, ours_n = ours(model, Path(tmp) / "ours")
    print(f"model {model}")
    print(f"baseline lm-eval simple_evaluate: {base_n} samples in {base_s:.1f} s = "
          f"{base_n / base_s:.2f} samples/s (includes loading the model)")
    print(f"llmops evaluate runner:           {ours_n} samples in {ours_s:.1f} s = "
          f"{ours_n / ours_s:.2f} samples/s (includes loading the model, llmops metrics)")
    print(f"ratio llmops/lm-eval: {(ours_n / ours_s) / (base_n / base_s):.2f}x")


if __name__ == "__main__":
    main()
