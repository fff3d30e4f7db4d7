"""A Dataset's self-instruct step with a teacher endpoint: a second served model on
127.0.0.1 with its own key (the project's runtime behind a proxy that answers 429 once)
writes new rows; the novelty filter keeps only new text; the teacher's identity, settings and
usage are in the dataset version's statistics (not its key); preparing again asks nothing."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from controller.apply.prepare import Preparer, read_split
from controller.load.desired import load_desired
from controller.workspace import open_registry
from tests.integration.test_arena_endpoint_contestant import CountingProxy
from tests.serving import config, running
from tests.tiny import make_scripted_model

KEY = "sk-teacher-90b1c4e7aa"
WRITES = "Can I export invoices?"
ROWS = [
    ("How long is the Business trial?", "14 days."),
    ("How do I reset my password?", "Use the login page link."),
    ("Which plans include SSO?", "Business and Enterprise."),
    ("Where do I change my avatar?", "Settings, then Profile."),
]


def dataset(url: str, splits: str = "{train: 1.0, validation: 0.0, test: 0.0}") -> str:
    return f"""
apiVersion: llmops/v1
kind: Dataset
metadata: {{name: faq}}
spec:
  format: instruction
  sources:
    - {{type: file, path: data/faq.jsonl}}
  steps:
    - step: augment
      method: self_instruct
      count: 3
      novelty_threshold: 0.7
      endpoint:
        base_url: {url}
        model: teacher
        api_key: {{env: LLMOPS_KEY_TEACHER}}
        concurrency: 2
  splits: {splits}
"""


@pytest.fixture
def teacher(tmp_path: Path, tiny_model: Path) -> Iterator[CountingProxy]:
    """The runtime serving a scripted model (it writes WRITES, whatever it is asked) as
    'teacher', keyed, behind the counting proxy."""
    folder = make_scripted_model(tiny_model, tmp_path / "teacher", WRITES)
    cfg = config("teacher", folder, api_key_env="LLMOPS_KEY_TEACHER")
    with running(cfg, tmp_path / "runtime", env={"LLMOPS_KEY_TEACHER": KEY}) as runtime:
        proxy = CountingProxy(runtime.url)
        try:
            yield proxy
        finally:
            proxy.server.shutdown()


def prepare(root: Path, spec: str):  # type: ignore[no-untyped-def]
    (root / "specs/datasets/faq.yaml").write_text(spec)
    loaded = load_desired(root)
    assert loaded.ok, [d.render() for d in loaded.diagnostics]
    return Preparer(loaded, open_registry(root), Console(quiet=True)).prepare("faq")


def test_a_teacher_endpoint_writes_rows_once_and_is_recorded(
    tmp_path: Path, tiny_model: Path, teacher: CountingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLMOPS_KEY_TEACHER", KEY)
    root = tmp_path / "repo"
    (root / "specs/datasets").mkdir(parents=True)
    (root / "data").mkdir()
    shutil.copytree(tiny_model, root / "models/tiny")
    (root / "data/faq.jsonl").write_text(
        "".join(json.dumps({"prompt": q, "response": a}) + "\n" for q, a in ROWS)
    )

    outcome = prepare(root, dataset(teacher.url))
    step = next(s for s in outcome.stats["steps"] if s["step"] == "augment")
    # The teacher writes one text: the first is new and kept (with its answer), every later
    # one is the same text again and the novelty filter drops it.
    assert step["generated"] == 1 and step["rejected_not_novel"] == 8
    rows = read_split(outcome.folder, "train")
    assert len(rows) == len(ROWS) + 1
    assert [r["response"] for r in rows if r["prompt"] == WRITES] == [WRITES]
    # nine questions (three attempts per row asked, two at a time) and one answer; one 429
    assert len(teacher.bodies) == 11 and teacher.most_in_flight <= 2
    assert {b["model"] for b in teacher.bodies} == {"teacher"}
    assert len({b["seed"] for b in teacher.bodies[1:]}) == 10  # each attempt its own seed
    recorded = step["teacher"]
    assert recorded["endpoint"] == teacher.url and recorded["model"] == "teacher"
    assert recorded["api_key_env"] == "LLMOPS_KEY_TEACHER"
    assert recorded["settings"]["concurrency"] == 2 and recorded["settings"]["temperature"] == 0.8
    assert (recorded["requests"], recorded["retries"], recorded["cached"]) == (11, 1, 0)
    assert recorded["answers"] == 10 and recorded["completion_tokens"] >= 10

    # Other splits are another version: prepared again, every reply from the cache.
    again = prepare(root, dataset(teacher.url, "{train: 0.5, validation: 0.0, test: 0.5}"))
    assert again.status == "prepared" and again.version.version != outcome.version.version
    assert len(teacher.bodies) == 11
    step = next(s for s in again.stats["steps"] if s["step"] == "augment")
    assert step["generated"] == 1 and step["teacher"]["requests"] == 0
    assert step["teacher"]["cached"] == 10

    stored = [p for p in root.rglob("*") if p.is_file()]
    assert not [p for p in stored if KEY.encode() in p.read_bytes()]
