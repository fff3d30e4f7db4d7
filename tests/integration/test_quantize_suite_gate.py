"""A quantized artifact's suite gate: the gate's EvalSuite run on the GGUF through the llama.cpp
serving backend and on its source version, compared sample by sample (paired bootstrap) with
the default gates (perplexity at most 3% worse, other metrics non-inferior within a margin);
a good q8_0 passes and is registered with the numbers, a damaged artifact fails by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from controller.apply.evaluate import Evaluator
from controller.load.desired import load_desired
from controller.workspace import open_registry
from runners.quantize import export_gguf
from tests.apply_repo import git
from tests.conftest import PROJECT_ROOT
from tests.integration.test_apply import llmops
from tests.tiny import model_spec

pytest.importorskip("llama_cpp")
# Two suite runs through lm-eval, two GGUF exports and two llama.cpp runtimes: about 90 s on
# 2 shared cores, over the default suite's budget; runners/quantize/suite.py's gates are
# checked in seconds by tests/unit/test_quantize_suite_gates.py.
pytestmark = pytest.mark.hardening

SUITE = """
apiVersion: llmops/v1
kind: EvalSuite
metadata: {name: gate}
spec:
  tasks:
    - name: answers
      type: generate_until
      data: {type: file, path: data/eval.jsonl}
      prompt: "{question}"
      target: answer
      metrics: [rouge_l, token_f1]
      generation: {max_new_tokens: 6}
    - name: ppl
      type: loglikelihood_rolling
      data: {type: file, path: data/eval.jsonl}
      prompt: "{question}\\n{answer}"
      metrics: [perplexity]
  bootstrap: {samples: 200, confidence: 0.95, seed: 0}
"""


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "repo"
    shutil.copytree(tiny_model, root / "models/tiny")
    (root / "specs/models").mkdir(parents=True)
    (root / "specs/evals").mkdir(parents=True)
    (root / "specs/models/tiny.yaml").write_text(
        model_spec("tiny", {"type": "local", "path": "models/tiny"})
    )
    source = {"type": "quantized", "from": "tiny@1", "quantization": "q8_0"}
    # 12 answers: a margin of 0.1 is about the noise of one flipped answer among them
    source["gate"] = {"suite": "gate", "non_inferiority_margin": 0.1}  # type: ignore[assignment]
    (root / "specs/models/tiny-q8.yaml").write_text(model_spec("tiny-q8", source))
    (root / "specs/evals/gate.yaml").write_text(SUITE)
    rows = (PROJECT_ROOT / "data/evals/support-faq-eval.jsonl").read_text().splitlines()[:12]
    (root / "data").mkdir()
    (root / "data/eval.jsonl").write_text("\n".join(rows) + "\n")
    (root / ".gitignore").write_text(".llmops/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "suite gate")
    return root


def test_q8_0_passes_the_suite_gate_and_a_damaged_artifact_fails_it(
    repo: Path, tmp_path: Path, tiny_model: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    applied = llmops(repo, "apply", "--json")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "gate ppl/perplexity max_drop" in applied.stderr + applied.stdout
    registry = open_registry(repo)
    version = registry.find("tiny-q8@1")
    assert version is not None
    suite = version.extra["quality_gate"]["suite"]
    assert suite["passed"] is True and suite["baseline"] == "tiny@1"
    rules = {(g["metric"], g["rule"].split()[0]) for g in suite["gates"]}
    assert rules == {
        ("ppl/perplexity", "max_drop"),
        ("answers/rouge_l", "non_inferiority_margin"),
        ("answers/token_f1", "non_inferiority_margin"),
    }
    (ppl,) = [m for m in suite["metrics"] if m["metric"] == "ppl/perplexity"]
    assert abs(ppl["candidate"] / ppl["baseline"] - 1) < 0.03  # q8_0 of tiny: within 3%
    assert {m.suite for m in version.metrics} >= {"gate", "quantize-gate"}
    (entry,) = [r for r in json.loads(applied.stdout)["results"] if r["address"] == "Model/tiny-q8"]
    gates = entry["outputs"]["gates"]
    assert {name.split(" ")[0] for name in gates} == {m for m, _ in rules}
    assert all(verdict["passed"] for verdict in gates.values())

    # The same gate on a damaged artifact (a tensor scaled 30x: confident, wrong logits).
    damaged_dir = tmp_path / "damaged"
    shutil.copytree(tiny_model, damaged_dir)
    damaged = AutoModelForCausalLM.from_pretrained(damaged_dir)
    with torch.no_grad():
        damaged.model.norm.weight.mul_(30.0)
    damaged.save_pretrained(damaged_dir, safe_serialization=True)
    broken = export_gguf(damaged_dir, tmp_path / "broken.gguf", "f16")
    loaded = load_desired(repo)
    evaluator = Evaluator(loaded, registry, Console(quiet=True))
    origin = registry.find("tiny@1")
    assert origin is not None
    comparison, _ = evaluator.quantize_gate(
        "gate",
        "tiny@1",
        registry.materialize(origin),
        broken,
        "tiny-broken",
        "tiny-broken (f16)",
        0.03,
        0.1,
        tmp_path / "work",
    )
    failed = {g.metric for g in comparison.gates if not g.passed}
    assert "ppl/perplexity" in failed, json.dumps([g.as_dict() for g in comparison.gates])
