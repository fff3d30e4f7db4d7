"""The README's demo at its full budget (scripts/demo.sh on an unchanged copy of the specs but
for the deployment's port and request timeout): the fine-tune beats the base model on ROUGE-L
with a 95% interval above zero, every gate passes, the deployed model answers and knows at
least 5 of the 10 checked facts, and the champion's q8_0 passes its gate and answers. About
9 minutes on 2 cores alone (`make test-demo`); `make test` runs it first, beside the other
tests on the second worker (marker demo_full)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.test_demo import (
    allow_slow_answers,
    commit,
    copy_demo,
    run_demo,
    stop_servers,
)


@pytest.mark.slow
@pytest.mark.demo_full
def test_full_demo_improves_rouge_l_and_passes_every_gate(tmp_path: Path) -> None:
    root = copy_demo(tmp_path / "demo")
    allow_slow_answers(root)
    commit(root)
    started = time.monotonic()
    try:
        result = run_demo(root, timeout=2700)
        took = time.monotonic() - started
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        answer = next(line for line in result.stdout.splitlines() if line.startswith("answer: "))
        assert answer[len("answer: ") :].strip(), "the deployed model answered with nothing"
        # The keyword check of 10 training-set facts, asked of the deployed model.
        facts = re.search(
            r"^facts: (\d+)/10 answers contain the fact that matters(; \d+ got no answer)?$",
            result.stdout,
            re.M,
        )
        assert facts, result.stdout[-3000:]
        print(f"\n{facts.group(0)}")
        stages = re.findall(r"^   \((\w+): (\d+) s\)$", result.stdout, re.M)
        print("stages: " + ", ".join(f"{name} {seconds} s" for name, seconds in stages))
        # Measured 7/10 here (the base model and the old one-epoch LoRA: 0/10). Training
        # on another machine's thread count sums in another order and may flip a borderline
        # answer or two; a run that teaches nothing fails this.
        assert int(facts.group(1)) >= 5, result.stdout[-3000:]

        # Read as JSON: the lock file is the committed record, whatever reads it in Python.
        lock = json.loads((root / "llmops.lock").read_text())["resources"]
        evaluation = lock["Evaluation/support-finetune/default"]["outputs"]
        rouge = next(r for r in evaluation["comparison"] if r["metric"] == "faq-answers/rouge_l")
        print(
            f"\nfull demo in {took:.0f} s: ROUGE-L {rouge['baseline']:.4f} (control) -> "
            f"{rouge['candidate']:.4f} (default), difference {rouge['difference']:+.4f}, "
            f"95% interval [{rouge['low']:+.4f}, {rouge['high']:+.4f}]; "
            f"gates {json.dumps(evaluation['gates'])}"
        )
        assert rouge["difference"] > 0 and rouge["low"] > 0, rouge

        suite = yaml.safe_load((root / "specs/evals/support-regression.yaml").read_text())
        gates = evaluation["gates"]
        gated = {g["metric"] for g in suite["spec"]["gates"]}
        assert {name.split(" ")[0] for name in gates} == gated, gates
        failed = {name: g for name, g in gates.items() if g["passed"] is not True}
        assert not failed, failed
        assert lock["Model/support-assistant"]["outputs"] == {
            "version": "support-assistant@1",
            "aliases": ["champion"],
        }

        # The champion quantised to q8_0 behind its suite gate, served by llama.cpp, answering.
        quantized = lock["Model/support-assistant-q8"]["outputs"]
        print(f"quantized: {json.dumps(quantized)}")
        assert quantized["version"] == "support-assistant-q8@1"
        assert quantized["quantized_from"] == "support-assistant@1"
        assert quantized["metrics"]["perplexity_increase"] < 0.03, quantized
        quantize_gates = {name.split(" ")[0] for name in quantized["gates"]}
        # Every per-sample metric of the suite is gated, not only the suite's own gates.
        assert quantize_gates == {
            "faq-answers/rouge_l",
            "faq-answers/token_f1",
            "faq-answers/keyword_recall",
            "faq-choice/accuracy",
            "faq-perplexity/perplexity",
            "faq-perplexity/word_perplexity",
        }, quantized
        assert all(g["passed"] is True for g in quantized["gates"].values()), quantized
        served = lock["Deployment/support-assistant-q8"]["outputs"]
        assert served["version"] == "support-assistant-q8@1", served
        answers = [line for line in result.stdout.splitlines() if line.startswith("answer: ")]
        assert len(answers) == 2, answers  # the champion's, then its q8_0's

        # The arena: base against the champion on held-out questions, judged in both orders.
        arena = lock["Arena/support-arena"]["outputs"]
        print(f"arena: {json.dumps(arena)}")
        assert arena["models"] == {
            "smollm2-135m-instruct": "smollm2-135m-instruct@1",
            "support-assistant@champion": "support-assistant@1",
        }
        assert arena["battles"] == 10
        assert sum(arena.get("votes", {}).values()) + arena.get("unparseable", 0) == 10
        again = subprocess.run(
            [sys.executable, "-m", "controller.cli.main", "arena", "run", "support-arena"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert again.returncode == 0, again.stderr[-3000:]
        assert "0 answer(s) generated, 0 battle(s) judged now" in again.stderr
        print(again.stdout)

        # The brain scan against SmolLM2: full fine-tuning moved every linear module.
        scan = lock["Experiment/support-finetune/default"]["outputs"]["scan"]
        print(f"brain scan: {json.dumps(scan)}")
        linear = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        assert linear <= set(scan["modules_changed"]), scan
        assert not [a for a in scan.get("alarms", []) if a.startswith("error")], scan
        # What the base has too (SmolLM2's massive activations) is context, not an alarm: a
        # handful of grouped alarms at most, and the scan leads with what fine-tuning changed.
        assert len(scan.get("alarms", [])) <= 5, scan
        shown = subprocess.run(
            [sys.executable, "-m", "controller.cli.main", "inspect", "support-assistant@1"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert shown.returncode == 0, shown.stderr[-3000:]
        print(shown.stdout[:3000])
        lines = [line for line in shown.stdout.splitlines() if line.strip()]
        first_alarm = next(
            i for i, line in enumerate(lines) if re.search(r"\d+ alarm\(s\)|no alarms", line)
        )
        assert any("what changed" in line for line in lines[:first_alarm]), shown.stdout[:3000]
    finally:
        stop_servers(root)
