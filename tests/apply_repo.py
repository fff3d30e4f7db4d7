"""A complete tiny repository for apply tests: model, dataset, suite, experiment, promotion,
deployment. Small enough that a full apply takes well under a minute on 2 cores."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

from runners.deploy.local import is_serving_process
from tests.conftest import PROJECT_ROOT
from tests.tiny import model_spec

API_KEY_ENV = "LLMOPS_KEY_TINY_ASSISTANT"

SPECS = {
    "specs/datasets/faq.yaml": """
apiVersion: llmops/v1
kind: Dataset
metadata: {name: faq}
spec:
  format: instruction
  sources:
    - {type: file, path: data/faq.jsonl, mapping: {prompt: question, response: answer}}
  on_bad_rows: skip
  steps: [{step: normalize}, {step: filter}, {step: dedup}]
  splits: {train: 0.85, validation: 0.15, test: 0.0}
""",
    "specs/evals/smoke.yaml": """
apiVersion: llmops/v1
kind: EvalSuite
metadata: {name: smoke}
spec:
  tasks:
    - name: answers
      type: generate_until
      data: {type: file, path: data/eval.jsonl}
      prompt: "{question}"
      target: answer
      metrics: [rouge_l, token_f1]
      generation: {max_new_tokens: 6}
      limit: 4
    - name: ppl
      type: loglikelihood_rolling
      data: {type: file, path: data/eval.jsonl}
      prompt: "{question}\\n{answer}"
      metrics: [perplexity]
      limit: 6
  # The tiny random model scores 374 against 377 for a uniform guess over its 377 tokens;
  # the fine-tune lowers it a little (-0.1 at 4 steps, -1.8 at 40). A model that forgot it
  # all (uniform: +3.2) or whose weights are noise (+1.4e4) rises by more than 1 and fails.
  gates:
    - {metric: ppl/perplexity, max_drop: 1.0}
  bootstrap: {samples: 200, confidence: 0.95, seed: 0}
  smoke_prompts: 2
""",
    "specs/experiments/exp.yaml": """
apiVersion: llmops/v1
kind: Experiment
metadata: {name: exp}
spec:
  base_model: tiny
  dataset: faq
  training:
    max_steps: 4
    batch_size: 4
    learning_rate: 1.0e-3
    max_seq_len: 96
    eval_interval: 2
    checkpoint_interval: 2
    merge: true
    lora: {r: 4, alpha: 8, target_modules: [q_proj, v_proj]}
  eval_suite: smoke
  register_as: assistant
""",
    "specs/models/assistant.yaml": """
apiVersion: llmops/v1
kind: Model
metadata: {name: assistant}
spec:
  source: {type: experiment, experiment: exp, run: default}
  aliases: [champion]
""",
}

DEPLOYMENT = f"""
apiVersion: llmops/v1
kind: Deployment
metadata: {{name: assistant}}
spec:
  model: assistant@champion
  target: local
  port: {{port}}
  api_key: {{env: {API_KEY_ENV}}}
  limits: {{max_tokens: 32, max_concurrency: 2}}
  smoke_suite: smoke
  collect: {{enabled: true, sample_rate: 1.0, into: assistant-chats}}
"""


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def build_repo(root: Path, tiny_model: Path, deploy_port: int | None = None) -> Path:
    """The tiny repository, committed; with a local Deployment when a port is given."""
    for relative, text in SPECS.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    (root / "specs/models/tiny.yaml").write_text(
        model_spec("tiny", {"type": "local", "path": "models/tiny"})
    )
    if deploy_port is not None:
        (root / "specs/deployments").mkdir(parents=True, exist_ok=True)
        (root / "specs/deployments/assistant.yaml").write_text(
            DEPLOYMENT.replace("{port}", str(deploy_port))
        )
    shutil.copytree(tiny_model, root / "models/tiny")
    (root / "data").mkdir()
    lines = (PROJECT_ROOT / "data/support-faq/faq.jsonl").read_text().splitlines()[:60]
    (root / "data/faq.jsonl").write_text("\n".join(lines) + "\n")
    rows = [
        json.loads(line)
        for line in (PROJECT_ROOT / "data/evals/support-faq-eval.jsonl").read_text().splitlines()
    ][:6]
    (root / "data/eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / ".gitignore").write_text(".llmops/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "tiny repository")
    return root


def committed_repo(root: Path, tiny_model: Path, specs: dict[str, str], message: str) -> Path:
    """A repository holding the tiny model as Model `tiny` and `specs` (path -> text),
    committed on main; the caller stops its runtimes with `stop_runtimes`."""
    files = {
        "specs/models/tiny.yaml": model_spec("tiny", {"type": "local", "path": "models/tiny"}),
        ".gitignore": ".llmops/\n",
        **specs,
    }
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    shutil.copytree(tiny_model, root / "models/tiny")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", message)
    return root


def stop_runtimes(root: Path) -> None:
    """Kill every local runtime the repository's deployments started (a test's teardown)."""
    for state in (root / ".llmops/deployments").glob("*/state.json"):
        pid = json.loads(state.read_text())["pid"]
        if is_serving_process(pid):
            os.kill(pid, signal.SIGKILL)
