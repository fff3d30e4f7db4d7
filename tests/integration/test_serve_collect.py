"""Chats collected by a running deployment, with feedback, prepare into a Dataset."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from rich.console import Console

from controller.apply.prepare import Preparer, read_split
from controller.load.desired import load_desired
from controller.workspace import open_registry
from runners.data.steps import normalize_text
from tests.serving import config, running
from tests.tiny import model_spec

STORE = "support-feedback"
DEPLOYMENT = f"""
apiVersion: llmops/v1
kind: Deployment
metadata: {{name: support}}
spec:
  model: tiny
  collect: {{enabled: true, sample_rate: 1.0, redact_pii: true, into: {STORE}}}
"""
CHATS = """
apiVersion: llmops/v1
kind: Dataset
metadata: {name: approved-chats}
spec:
  format: chat
  sources:
    - {type: collected, store: support-feedback, only_positive_feedback: true}
  steps:
    - {step: normalize}
  splits: {train: 1.0, validation: 0.0, test: 0.0}
"""
PAIRS = """
apiVersion: llmops/v1
kind: Dataset
metadata: {name: all-pairs}
spec:
  format: instruction
  sources:
    - {type: collected, store: support-feedback}
  splits: {train: 1.0, validation: 0.0, test: 0.0}
"""
EMAIL = "jane.doe@example.org"


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("LLMOPS_REGISTRY_URL", raising=False)
    monkeypatch.delenv("LLMOPS_STATE_DIR", raising=False)
    root = tmp_path / "repo"
    for folder in ("specs/models", "specs/datasets", "specs/deployments"):
        (root / folder).mkdir(parents=True)
    shutil.copytree(tiny_model, root / "models/tiny")
    (root / "specs/models/tiny.yaml").write_text(
        model_spec("tiny", {"type": "local", "path": "models/tiny"})
    )
    (root / "specs/deployments/support.yaml").write_text(DEPLOYMENT)
    (root / "specs/datasets/approved-chats.yaml").write_text(CHATS)
    (root / "specs/datasets/all-pairs.yaml").write_text(PAIRS)
    (root / ".gitignore").write_text(".llmops/\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "specs")
    return root


def test_collected_chats_and_feedback_prepare_into_datasets(repo: Path, tiny_model: Path) -> None:
    store = repo / ".llmops/collected" / STORE
    cfg = config(
        "support",
        tiny_model,
        collect={"enabled": True, "sample_rate": 1.0, "redact_pii": True, "dir": str(store)},
        smoke={"prompts": ["Hello"], "max_tokens": 4},
    )
    questions = {
        "corrected": f"My email is {EMAIL}, how do I reset my password?",
        "down": "Can I export my data?",
        "up": "What does the Team plan cost?",
        "none": "Is there a dark mode?",
    }
    correction = f"Use Settings > Security; we send a link to {EMAIL}."
    ids = {}
    with running(cfg, repo.parent / "serve") as runtime:
        api = OpenAI(base_url=f"{runtime.url}/v1", api_key="unused", max_retries=0)
        answers = {}
        for key, question in questions.items():
            reply = api.chat.completions.create(
                model="support",
                messages=[
                    {"role": "system", "content": "You are a support assistant."},
                    {"role": "user", "content": question},
                ],
                max_tokens=8,
            )
            ids[key] = reply.id
            answers[key] = reply.choices[0].message.content
        verdicts = [
            {"id": ids["corrected"], "rating": "down", "correction": correction},
            {"id": ids["down"], "rating": -1, "comment": "wrong"},
            {"id": ids["up"], "rating": 1},
        ]
        for verdict in verdicts:
            response = httpx.post(f"{runtime.url}/v1/feedback", json=verdict)
            assert response.status_code == 200 and response.json()["recorded"] is True
        assert runtime.stop() == 0

    raw = "".join(path.read_text() for path in sorted(store.glob("*.jsonl")))
    # In the question (its message and the prompt field) and in the correction.
    assert EMAIL not in raw and raw.count("[EMAIL]") == 3
    records = [json.loads(line) for line in raw.splitlines()]
    assert [r["type"] for r in records].count("interaction") == 4

    loaded = load_desired(repo)
    assert loaded.ok, [d.render() for d in loaded.diagnostics]
    preparer = Preparer(loaded, open_registry(repo), Console(quiet=True))

    approved = read_split(preparer.prepare("approved-chats").folder, "train")
    by_question = {row["messages"][1]["content"]: row for row in approved}
    assert set(by_question) == {
        questions["corrected"].replace(EMAIL, "[EMAIL]"),
        questions["up"],
    }
    corrected = by_question[questions["corrected"].replace(EMAIL, "[EMAIL]")]["messages"]
    assert corrected[0] == {"role": "system", "content": "You are a support assistant."}
    assert corrected[-1] == {
        "role": "assistant",
        "content": correction.replace(EMAIL, "[EMAIL]"),
    }
    expected_up = normalize_text(answers["up"] or "", "NFC", whitespace=True)
    assert by_question[questions["up"]]["messages"][-1]["content"] == expected_up
    assert all(set(row) == {"messages"} for row in approved)

    pairs = read_split(preparer.prepare("all-pairs").folder, "train")
    by_prompt = {row["prompt"]: row["response"] for row in pairs}
    assert len(pairs) == 4 and set(by_prompt) >= {questions["down"], questions["none"]}
    assert by_prompt[questions["down"]] == answers["down"]
    assert correction.replace(EMAIL, "[EMAIL]") in by_prompt.values()
    prepared = "".join(p.read_text() for p in (repo / "data/prepared").rglob("*.jsonl"))
    assert EMAIL not in prepared
