"""The README's demo (scripts/demo.sh, what `make demo` runs) on a copy of this repository,
with a smaller training and evaluation budget so the suite stays fast: validate, plan,
apply (real SmolLM2: pull, prepare, fine-tune, evaluate with gates, promote, deploy), report,
and a request to the deployed model with feedback collected."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runners.deploy.local import free_port, is_serving_process
from tests.apply_repo import git
from tests.conftest import PROJECT_ROOT

COPIED = ("specs", "data", "examples", "scripts", ".dvc", ".dvcignore", ".gitignore")


def copy_demo(root: Path) -> Path:
    """A copy of the demo repository, its deployment on a free port; commit() it after edits."""
    root.mkdir()
    for name in COPIED:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name)
        elif source.is_file():
            shutil.copy(source, root / name)
    for name, port in (("support-assistant", 8000), ("support-assistant-q8", 8001)):
        deployment = root / f"specs/deployments/{name}.yaml"
        text = deployment.read_text()
        assert text.count(f"port: {port}") == 1
        deployment.write_text(text.replace(f"port: {port}", f"port: {free_port()}"))
    return root


def allow_slow_answers(root: Path) -> None:
    """Time enough for an answer while the other test worker trains beside the demo on 2 cores.

    Both using every core, a 64-token answer has been seen to take over the deployment's 60 s;
    answers are greedy, so a longer wait changes no answer, only whether one comes back.
    """
    for name in ("support-assistant", "support-assistant-q8"):
        deployment = root / f"specs/deployments/{name}.yaml"
        text = deployment.read_text()
        assert "timeout_s: 60," in text
        deployment.write_text(text.replace("timeout_s: 60,", "timeout_s: 600,"))


def commit(root: Path) -> None:
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "demo")


def run_demo(root: Path, timeout: int) -> subprocess.CompletedProcess[str]:
    """scripts/demo.sh as `make demo` runs it, with this environment's llmops and Python."""
    bin_dir = Path(sys.executable).parent
    # The demo's key (LLMOPS_KEY_SUPPORT_ASSISTANT) is left out too: the demo makes its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOPS_")}
    env.update(LLMOPS=str(bin_dir / "llmops"), PYTHON=sys.executable)
    return subprocess.run(
        ["bash", "scripts/demo.sh"],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def stop_servers(root: Path) -> None:
    for state in (root / ".llmops/deployments").glob("*/state.json"):
        pid = json.loads(state.read_text())["pid"]
        if is_serving_process(pid):
            os.kill(pid, signal.SIGTERM)


@pytest.mark.slow
@pytest.mark.demo_quick
def test_demo_script_runs_the_whole_loop(tmp_path: Path) -> None:
    root = copy_demo(tmp_path / "demo")
    experiment = root / "specs/experiments/support-finetune.yaml"
    text = experiment.read_text()
    assert text.count("    epochs: 3\n") == 1
    text = text.replace("    epochs: 3\n", "    epochs: 3\n    max_steps: 2\n")
    experiment.write_text(text)
    preference = root / "specs/experiments/support-dpo.yaml"
    text = preference.read_text()
    assert text.count("    epochs: 1\n") == 1
    preference.write_text(text.replace("    epochs: 1\n", "    epochs: 1\n    max_steps: 2\n"))
    suite = root / "specs/evals/support-regression.yaml"
    suite.write_text(suite.read_text().replace("      metrics:", "      limit: 3\n      metrics:"))
    # The quantized champion's gate compares 3 samples a task: one answer that differs moves a
    # mean by a third, so the non-inferiority margin is widened to match (perplexity: 3% still).
    quantized = root / "specs/models/support-assistant-q8.yaml"
    text = quantized.read_text()
    assert "gate: {suite: support-regression, non_inferiority_margin: 0.15}" in text
    quantized.write_text(
        text.replace(
            "non_inferiority_margin: 0.15}",
            "non_inferiority_margin: 0.7}",
        )
    )
    arena = root / "specs/arenas/support-arena.yaml"
    text = arena.read_text()
    assert "battles_per_pair: 10" in text
    arena.write_text(text.replace("battles_per_pair: 10", "battles_per_pair: 2"))
    # Two of the ten fact checks.
    checks = root / "data/support-faq/fact-checks.jsonl"
    checks.write_text("".join(checks.read_text().splitlines(keepends=True)[:2]))
    allow_slow_answers(root)
    commit(root)
    try:
        result = run_demo(root, timeout=1500)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        out = result.stdout
        for stage in ("validate", "plan", "apply", "report", "request", "facts", "quantized"):
            assert f"({stage}: " in out
        # The keyword check ran against the deployment (2 training steps teach no facts); a
        # question the loaded deployment timed out on is that question's failure, not the demo's.
        assert re.search(
            r"^facts: \d+/2 answers contain the fact that matters(; \d got no answer)?$", out, re.M
        )
        assert "report:   .llmops/reports/report.md" in out
        answer = next(line for line in out.splitlines() if line.startswith("answer: "))
        assert len(answer) > len("answer: ")
        assert "feedback: " in out

        report = (root / ".llmops/reports/report.md").read_text()
        assert "#### `Evaluation/support-finetune/default`: support-assistant@1 against" in report
        assert "smollm2-135m-instruct@1" in report
        lock = json.loads((root / "llmops.lock").read_text())["resources"]
        assert lock["Deployment/support-assistant"]["outputs"]["version"] == "support-assistant@1"
        assert lock["Model/support-assistant"]["outputs"]["aliases"] == ["champion"]
        # The champion quantised behind its suite gate, served by llama.cpp, and answering.
        for address in ("Model/support-assistant-q8", "Deployment/support-assistant-q8"):
            assert lock[address]["outputs"]["version"] == "support-assistant-q8@1", address
        assert "gate faq-perplexity/perplexity max_drop" in result.stderr + out
        assert len([line for line in out.splitlines() if line.startswith("answer: ")]) == 2
        # The request and its feedback were collected into the store a Dataset can read.
        collected = list((root / ".llmops/collected/support-feedback").glob("*.jsonl"))
        records = [json.loads(x) for f in collected for x in f.read_text().splitlines()]
        assert {r["type"] for r in records} >= {"interaction", "feedback"}
    finally:
        stop_servers(root)
