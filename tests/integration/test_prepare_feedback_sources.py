"""Preference and unpaired Datasets from production feedback and from an arena's votes,
prepared by `llmops data prepare` in a real git + DVC repository with the real registry: what
the serving runtime's collector wrote (corrections, thumbs up and down), and FastChat votes
imported with `llmops arena import` (decisive ones become pairs, ties do not)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from controller.state.paths import StatePaths
from runners.serve.collect import Collector
from tests.apply_repo import build_repo, git

EMAIL = "jane.doe@example.com"
SPECS = {
    "specs/datasets/pairs.yaml": """
apiVersion: llmops/v1
kind: Dataset
metadata: {name: pairs}
spec:
  format: preference
  sources: [{type: collected, store: assistant-chats}]
  steps: [{step: redact_pii}, {step: dedup}, {step: decontaminate, ngram: 6}]
  splits: {train: 1.0, validation: 0.0, test: 0.0}
""",
    "specs/datasets/labels.yaml": """
apiVersion: llmops/v1
kind: Dataset
metadata: {name: labels}
spec:
  format: unpaired
  sources: [{type: collected, store: assistant-chats, only_positive_feedback: true}]
  steps: [{step: dedup}]
  splits: {train: 1.0, validation: 0.0, test: 0.0}
""",
    "specs/datasets/votes.yaml": """
apiVersion: llmops/v1
kind: Dataset
metadata: {name: votes}
spec:
  format: preference
  sources: [{type: arena, arena: imported}]
  steps: [{step: redact_pii}, {step: dedup}]
  splits: {train: 1.0, validation: 0.0, test: 0.0}
""",
}
SPECS_NAMES = ("pairs", "labels", "votes")


def llmops(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli.main", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )


def prepared(root: Path, dataset: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    done = llmops(root, "data", "prepare", dataset, "--json")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(done.stdout)
    folder = root / "data/prepared" / dataset
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    return result, rows


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    root = build_repo(tmp_path / "repo", tiny_model, deploy_port=8999)
    for relative, text in SPECS.items():
        (root / relative).write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "feedback datasets")
    return root


def test_collected_corrections_and_ratings_become_pairs_and_labels(repo: Path) -> None:
    # What the serving runtime writes: the collector of the deployment's store (redacting).
    collector = Collector(
        StatePaths.for_repo(repo).collected("assistant-chats"),
        "assistant",
        "assistant@1",
        sample_rate=1.0,
        redact_pii=True,
    )
    eval_question = json.loads((repo / "data/eval.jsonl").read_text().splitlines()[0])
    chats = [
        ("a", f"Mail {EMAIL} my invoice?", "No.", ("down", f"Sent to {EMAIL}.")),
        ("b", "Is there a free plan?", "Maybe.", ("down", None)),
        ("c", "Can I export data?", "Yes, under Settings.", ("up", None)),
        ("d", "Unrated question?", "Unrated answer.", None),
        ("e", eval_question["question"], "Wrong.", ("down", "Right, fixed.")),
        ("f", "Mail me again?", "No.", ("down", "Sent again.")),
        ("g", "Mail me again?", "No.", ("down", "Sent again.")),  # a duplicate pair
    ]
    for key, question, answer, verdict in chats:
        messages = [{"role": "user", "content": question}]
        collector.interaction(key, messages, answer, {}, "/v1/chat/completions")
        if verdict is not None:
            collector.feedback(key, verdict[0], verdict[1], None)
    collector.interaction(  # a two-turn chat, corrected: the earlier turns stay in the prompt
        "h",
        [
            {"role": "user", "content": "I use the desktop app."},
            {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": "Where is dark mode?"},
        ],
        "Nowhere.",
        {},
        "/v1/chat/completions",
    )
    collector.feedback("h", "down", "Settings > Appearance > Dark.", None)

    result, rows = prepared(repo, "pairs")
    assert rows == [
        {"prompt": "Mail [EMAIL] my invoice?", "chosen": "Sent to [EMAIL].", "rejected": "No."},
        {"prompt": "Mail me again?", "chosen": "Sent again.", "rejected": "No."},
        {
            "prompt": [
                {"role": "user", "content": "I use the desktop app."},
                {"role": "assistant", "content": "Noted."},
                {"role": "user", "content": "Where is dark mode?"},
            ],
            "chosen": "Settings > Appearance > Dark.",
            "rejected": "Nowhere.",
        },
    ]
    stats = result["stats"]
    assert stats["duplicates_removed"] == 1 and stats["eval_overlap"] == 1, stats["steps"]

    result, rows = prepared(repo, "labels")
    assert [(r["completion"], r["label"]) for r in rows] == [
        ("Sent to [EMAIL].", True),
        ("No.", False),
        ("Maybe.", False),
        ("Yes, under Settings.", True),
        ("Right, fixed.", True),
        ("Wrong.", False),
        ("Sent again.", True),
        ("No.", False),
        ("Settings > Appearance > Dark.", True),
        ("Nowhere.", False),
    ]  # only_positive_feedback does not apply: the thumbs-down answers are the undesirable rows
    assert result["stats"]["duplicates_removed"] == 2  # g's two rows repeat f's


def battle(winner: str, a: str, b: str, prompt: str = "Capital of France?") -> dict[str, Any]:
    return {
        "model_a": "tiny",
        "model_b": "mute",
        "winner": winner,
        "judge": "alice",
        "conversation_a": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": a},
        ],
        "conversation_b": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": b},
        ],
    }


def test_an_arenas_decisive_votes_become_pairs(repo: Path, tmp_path: Path) -> None:
    log = tmp_path / "battles.jsonl"
    rows = [
        battle("model_a", "Paris.", "Rome."),
        battle("model_b", "Lyon.", f"Paris; ask {EMAIL}."),
        battle("tie", "Paris.", "Paris!"),
        battle("tie (bothbad)", "Rome.", "Berlin."),
        battle("model_a", "Four.", "Five.", prompt="2+2?"),
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = llmops(repo, "arena", "import", str(log), "--arena", "imported")
    assert done.returncode == 0, done.stderr

    result, pairs = prepared(repo, "votes")
    assert pairs == [
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome."},
        {"prompt": "Capital of France?", "chosen": "Paris; ask [EMAIL].", "rejected": "Lyon."},
        {"prompt": "2+2?", "chosen": "Four.", "rejected": "Five."},
    ]
    (lineage,) = result["stats"]["arenas"]
    assert {k: lineage[k] for k in ("arena", "votes", "decisive_pairs")} == {
        "arena": "imported",
        "votes": 5,
        "decisive_pairs": 3,
    }
    # Nothing new: the version is reused; a new decisive vote prepares a new version.
    again = llmops(repo, "data", "prepare", "votes", "--json")
    assert json.loads(again.stdout)["status"] == "cached"
    log.write_text(json.dumps(battle("model_b", "Blue.", "Red.", prompt="Colour?")) + "\n")
    assert llmops(repo, "arena", "import", str(log), "--arena", "imported").returncode == 0
    result, pairs = prepared(repo, "votes")
    assert result["status"] == "prepared" and len(pairs) == 4
    assert result["stats"]["arenas"][0]["votes"] == 6

    # A source naming no arena at all is a clear error, not an empty dataset.
    spec = repo / "specs/datasets/votes.yaml"
    spec.write_text(spec.read_text().replace("arena: imported", "arena: nowhere"))
    done = llmops(repo, "data", "prepare", "votes")
    assert done.returncode != 0
    assert "source 'arena: nowhere'" in done.stderr and "Traceback" not in done.stderr


def test_the_plan_sees_new_votes_and_newly_collected_rows(repo: Path, tmp_path: Path) -> None:
    """The rows an arena or collected source gives are not in any spec file: their digest,
    observed when the specs load, is the Dataset's input, so `llmops plan` retrains on new
    ones. Rows a Dataset does not take (an unrated answer for pairs) change nothing, and a
    Dataset without such sources gets no new input (its digest, and golden plans, stay)."""
    from controller.plan.planner import plan
    from controller.plan.types import ObservedResource, ObservedState
    from controller.workspace import load

    def desired() -> Any:
        loaded = load(repo)
        assert loaded.ok and loaded.desired is not None, loaded.diagnostics
        return loaded.desired

    before = desired()
    inputs = {a: dict(r.inputs) for a, r in before.resources.items()}
    assert "collected:assistant-chats" in inputs["Dataset/pairs"]
    assert "arena:imported" in inputs["Dataset/votes"]
    others = [a for a in inputs if a.startswith("Dataset/") and a[8:] not in SPECS_NAMES]
    assert others and all(k.startswith("file:") for a in others for k in inputs[a])
    applied = ObservedState(
        {
            address: ObservedResource(
                address=r.address,
                kind=r.kind,
                digest=r.digest,
                fields=r.fields,
                inputs=r.inputs,
                code_version=r.code_version,
                code_files=r.code_files,
            )
            for address, r in before.resources.items()
        }
    )

    def changed() -> dict[str, str]:
        actions = plan(desired(), applied).actions
        return {str(a.address): a.reason for a in actions if a.kind != "noop"}

    assert changed() == {}
    collector = Collector(
        StatePaths.for_repo(repo).collected("assistant-chats"),
        "assistant",
        "assistant@1",
        sample_rate=1.0,
        redact_pii=True,
    )
    question = [{"role": "user", "content": "Is there a free plan?"}]
    collector.interaction("a", question, "Maybe.", {}, "/v1/chat/completions")
    assert changed() == {}  # an unrated answer is no row of pairs, labels or votes
    collector.feedback("a", "down", "Yes, the Free plan.", None)
    now = changed()
    assert "input rows collected in assistant-chats changed" in now["Dataset/pairs"]
    assert "input rows collected in assistant-chats changed" in now["Dataset/labels"]
    assert "Dataset/votes" not in now

    log = tmp_path / "battles.jsonl"
    log.write_text(json.dumps(battle("model_a", "Paris.", "Rome.")) + "\n")
    assert llmops(repo, "arena", "import", str(log), "--arena", "imported").returncode == 0
    assert "input votes of arena imported changed" in changed()["Dataset/votes"]
