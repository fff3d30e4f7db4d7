"""Issue 27, class 1: arbitrary text in a suite's prompt, target and choices (and in the rows)
goes through the runner's rendering path, lm-eval's task included, as literal text only."""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.load.desired import load_desired
from runners.evaluate.placeholders import (
    FIELD_NAME,
    PlaceholderError,
    field_name_problem,
    fill,
    parse,
    problems,
)
from runners.evaluate.run import EvalError, build_task, task_config

JINJA_BITS = [
    "{{", "}}", "{%", "%}", "{#", "#}", "{", "}", "cycler", "lipsum", ".__init__", ".__globals__",
    ".os.system('touch /tmp/x')", "[0]", "()", "|attr('x')", " ", "question", "answer", "'", '"',
    "\\", "\n", "${oc.env:HOME}", "!r", ":>10",
]  # fmt: skip
hostile = st.lists(st.one_of(st.sampled_from(JINJA_BITS), st.text(max_size=8)), max_size=12).map(
    "".join
)
texts = st.one_of(st.text(max_size=60), hostile)
ROW = {"question": "What? {{ 7*7 }} {% x %}", "answer": "Yes {answer}", "label": 1,
       "choices": ["{{a}}", "b"], "q": "[1, 2]"}  # fmt: skip


@pytest.fixture(scope="module")
def lm_eval_task(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real lm-eval task over one row, built as the runner builds it."""
    data = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    task = {"name": "t", "type": "multiple_choice", "target": "label", "metrics": ["accuracy"]}
    yield build_task("suite", task, data)


@pytest.fixture(scope="module", autouse=True)
def no_template_engine() -> Iterator[None]:
    """A tripwire: lm-eval's Jinja renderer must never be reached from a suite task."""
    import lm_eval.utils

    def refuse(template: str, doc: dict[str, Any]) -> str:
        raise AssertionError(f"template engine reached with {template!r}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lm_eval.utils, "apply_template", refuse)
        yield


def reference(template: str, row: dict[str, Any]) -> str:
    """What a well-formed template means, by Python's own format-string parser (no lookup)."""
    out = []
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is not None:
            out.append(str(row[name]))
    return "".join(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts)
def test_any_prompt_text_is_refused_or_rendered_literally(text: str, lm_eval_task: Any) -> None:
    parts, found = parse(text)
    try:
        config = task_config("suite", {"name": "t", "type": "generate_until", "prompt": text},
                             Path("rows.jsonl"))  # fmt: skip
    except EvalError:
        assert found, "a well-formed prompt was refused"
        return
    assert not found
    row = {**ROW, **{p.name: f"<{p.name}>" for p in parts if not isinstance(p, str)}}
    rendered = lm_eval_task.doc_to_text(row, doc_to_text=config["doc_to_text"])
    assert rendered == reference(text, row)


@settings(max_examples=300, deadline=None)
@given(literal=texts, value=texts)
def test_literal_text_round_trips_and_row_values_stay_data(literal: str, value: str) -> None:
    escaped = literal.replace("{", "{{").replace("}", "}}")
    assert parse(escaped)[1] == []
    assert fill(escaped + "{question}" + escaped, {"question": value}) == literal + value + literal


@settings(max_examples=200, deadline=None)
@given(name=texts)
def test_any_target_or_choices_text_is_a_field_name_or_refused(
    name: str, lm_eval_task: Any
) -> None:
    task = {"name": "t", "type": "multiple_choice", "target": name, "choices": name}
    try:
        config = task_config("suite", task, Path("rows.jsonl"))
    except EvalError:
        assert field_name_problem(name)
        return
    assert FIELD_NAME.fullmatch(name)
    row = {name: ["x", "y"]}
    assert lm_eval_task.doc_to_choice(row, doc_to_choice=config["doc_to_choice"]) == ["x", "y"]
    row = {name: "7"}
    assert lm_eval_task.doc_to_target(row, doc_to_target=config["doc_to_target"]) == 7


def test_the_runners_task_reads_rows_as_lm_eval_templates_did(lm_eval_task: Any) -> None:
    doc = next(iter(lm_eval_task.test_docs()))
    assert lm_eval_task.doc_to_text(doc) == ROW["question"]
    assert lm_eval_task.doc_to_target(doc) == 1
    assert lm_eval_task.doc_to_choice(doc) == ["{{a}}", "b"]


@pytest.mark.parametrize(
    "template",
    ["{q.__class__.__init__.__globals__}", "{q[0]}", "{q!r}", "{0}", "{}", "{% if q %}", "x}"],
)
def test_str_format_attribute_walks_are_refused(template: str) -> None:
    """The deployment smoke check's prompts (once `str.format_map`) and the runner alike."""
    with pytest.raises(PlaceholderError):
        fill(template, {"q": "secret holder"})


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("{{ cycler.__init__.__globals__.os }}", "template expression"),
        ("{{question}}", "write {question}"),
        ("{% set x = lipsum.__globals__ %}{question}", "template statement"),
        ("{# comment #}{question}", "template comment"),
        ("{question.__class__}", "attribute and index access"),
        ("{question[0]}", "attribute and index access"),
        ('{"a": 1} {question}', "opens no {field} placeholder"),
    ],
)
def test_validate_names_the_prompt_field_with_a_hint(
    make_repo: Callable[..., Path], prompt: str, expected: str
) -> None:
    assert problems(prompt)
    root = make_repo()
    path = root / "specs/evals/suite.yaml"
    path.write_text(
        path.read_text().replace(
            "metrics: [rouge_l]", f"prompt: {json.dumps(prompt)}\n      metrics: [rouge_l]"
        )
    )
    loaded = load_desired(root)
    assert not loaded.ok
    found = [d for d in loaded.diagnostics if d.path == "spec.tasks[0].prompt"]
    assert found, [d.render() for d in loaded.diagnostics]
    line = path.read_text().splitlines().index(f"      prompt: {json.dumps(prompt)}") + 1
    assert (found[0].file, found[0].line) == ("specs/evals/suite.yaml", line)
    assert expected in found[0].message + found[0].hint


@pytest.mark.parametrize("prompt", ['{{"answer": "{answer}"}} {question}', "Q: {question}\nA:"])
def test_validate_accepts_placeholders_and_escaped_braces(
    make_repo: Callable[..., Path], prompt: str
) -> None:
    root = make_repo()
    path = root / "specs/evals/suite.yaml"
    path.write_text(
        path.read_text().replace(
            "metrics: [rouge_l]", f"prompt: {json.dumps(prompt)}\n      metrics: [rouge_l]"
        )
    )
    loaded = load_desired(root)
    assert loaded.ok, [d.render() for d in loaded.diagnostics]
