"""Issue 27, class 1: EvalSuite text (prompt, target, choices) is never a template: a Jinja
payload in a suite runs no code during a real evaluation on the tiny model."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from controller.apply.evaluate import Evaluator
from controller.load.desired import load_desired
from controller.workspace import open_registry
from runners.errors import LlmopsError
from tests.conftest import PROJECT_ROOT
from tests.tiny import model_spec


def payload(marker: Path) -> str:
    """A Jinja expression that, rendered by an unsandboxed environment, runs a shell command."""
    return "cycler.__init__.__globals__.os.system('touch " + str(marker) + "')"


def suite(task: str) -> str:
    return f"""
apiVersion: llmops/v1
kind: EvalSuite
metadata: {{name: suite}}
spec:
  tasks:
{task}
"""


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("LLMOPS_REGISTRY_URL", raising=False)
    monkeypatch.delenv("LLMOPS_STATE_DIR", raising=False)
    root = tmp_path / "repo"
    (root / "specs/models").mkdir(parents=True)
    (root / "specs/evals").mkdir(parents=True)
    (root / "data").mkdir()
    shutil.copytree(tiny_model, root / "models/tiny")
    (root / "specs/models/tiny.yaml").write_text(
        model_spec("tiny", {"type": "local", "path": "models/tiny"})
    )
    rows = (PROJECT_ROOT / "data/evals/support-faq-eval.jsonl").read_text().splitlines()[:2]
    (root / "data/eval.jsonl").write_text("\n".join(rows) + "\n")
    rows = (PROJECT_ROOT / "data/evals/support-faq-choice.jsonl").read_text().splitlines()[:2]
    (root / "data/choice.jsonl").write_text("\n".join(rows) + "\n")
    return root


def evaluate(root: Path) -> Path:
    loaded = load_desired(root)
    assert loaded.ok, [d.render() for d in loaded.diagnostics]
    outcome = Evaluator(loaded, open_registry(root), Console(quiet=True)).run("suite", "tiny")
    return outcome.folder


def test_jinja_expression_in_a_prompt_is_literal_text(repo: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned-prompt"
    # '{{(' passes validate (a literal brace before punctuation); Jinja would evaluate it.
    prompt = "Q: {question} {{(" + payload(marker) + ")}}"
    (repo / "specs/evals/suite.yaml").write_text(
        suite(f"""    - name: answers
      type: generate_until
      data: {{type: file, path: data/eval.jsonl}}
      prompt: {json.dumps(prompt)}
      metrics: [rouge_l]
      generation: {{max_new_tokens: 2}}""")
    )
    folder = evaluate(repo)
    assert not marker.exists(), "the suite's prompt ran a shell command during evaluation"
    assert (folder / "results.json").is_file()
    # What the model was shown: the row's question, then the payload as plain text.
    from runners.evaluate.run import build_task

    task = load_desired(repo).desired.resources["EvalSuite/suite"].fields["tasks"][0]
    built = build_task("suite", task, repo / "data/eval.jsonl")
    doc = next(iter(built.test_docs()))
    assert built.doc_to_text(doc) == f"Q: {doc['question']} {{({payload(marker)})}}"
    assert not marker.exists()


def test_template_in_target_or_choices_is_refused_at_validate(repo: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned-target"
    target = "label }}{{ " + payload(marker) + " }}{{ label"
    (repo / "specs/evals/suite.yaml").write_text(
        suite(f"""    - name: choice
      type: multiple_choice
      data: {{type: file, path: data/choice.jsonl}}
      target: {json.dumps(target)}
      choices: "choices}}}}{{% if {payload(marker)} %}}{{% endif %}}{{{{choices"
      metrics: [accuracy]""")
    )
    loaded = load_desired(repo)
    if loaded.ok:  # nothing refused it: run it, as `llmops apply` would
        with contextlib.suppress(Exception):  # whatever lm-eval makes of the rest
            evaluate(repo)
        assert not marker.exists(), "the suite's target field ran a shell command"
    assert not loaded.ok
    found = {d.path: d for d in loaded.diagnostics if d.file == "specs/evals/suite.yaml"}
    assert {"spec.tasks[0].target", "spec.tasks[0].choices"} <= set(found), found
    target_line = (
        (repo / "specs/evals/suite.yaml")
        .read_text()
        .splitlines()
        .index(f"      target: {json.dumps(target)}")
    )
    assert found["spec.tasks[0].target"].line == target_line + 1
    assert "field name" in found["spec.tasks[0].target"].message
    assert not marker.exists()


def test_runner_refuses_template_statements_it_is_handed_directly(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Defence in depth: the runner (a pipeline step, a Job) checks the suite it is given."""
    from runners.evaluate.run import EvalInputs
    from runners.evaluate.run import evaluate as run_evaluation

    marker = tmp_path / "pwned-runner"
    rows = (PROJECT_ROOT / "data/evals/support-faq-eval.jsonl").read_text().splitlines()[:2]
    data = tmp_path / "eval.jsonl"
    data.write_text("\n".join(rows) + "\n")
    task = {
        "name": "answers",
        "type": "generate_until",
        "prompt": "{% if " + payload(marker) + " %}{% endif %}{question}",
        "target": "answer",
        "metrics": ["rouge_l"],
        "generation": {"max_new_tokens": 2},
    }
    refused: LlmopsError | None = None
    try:
        run_evaluation(
            EvalInputs(
                "suite",
                {"tasks": [task]},
                {"answers": data},
                tiny_model,
                tmp_path / "out",
                report=lambda _: None,
            )
        )
    except LlmopsError as err:
        refused = err
    assert not marker.exists(), "the runner rendered a template statement from the suite"
    assert refused is not None and "prompt" in str(refused)
