"""Collected feedback as preference and unpaired rows: a correction is a pair (the correction
chosen over the served answer), a thumbs up or down labels the served answer; the chat's
earlier turns stay in the prompt; the production loop's snapshot takes the same rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.loop.window import collected_window, snapshot_lines
from runners.data.collected import feedback_rows, joined_rows, read_collected
from runners.data.preparation import PrepareInputs, SourceInput, prepare


def record(kind: str, **fields: object) -> dict:
    return {"type": kind, **fields}


def chat_store(tmp_path: Path) -> Path:
    """Five answers: corrected, rated down, rated up, unrated, and a two-turn chat corrected
    with the same text the model served (no pair: nothing was preferred)."""
    folder = tmp_path / "store"
    folder.mkdir()
    one = [{"role": "user", "content": "How do I reset my password?"}]
    two = [
        {"role": "user", "content": "Hi, I use the app."},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Where is dark mode?"},
    ]
    records = [
        record(
            "interaction",
            id="a",
            time="2026-12-01T10:00:00+00:00",
            messages=one,
            prompt=one[0]["content"],
            response="No idea.",
        ),
        record(
            "interaction",
            id="b",
            time="2026-12-01T10:01:00+00:00",
            messages=[{"role": "user", "content": "Price?"}],
            prompt="Price?",
            response="It costs a lot.",
        ),
        record(
            "interaction",
            id="c",
            time="2026-12-01T10:02:00+00:00",
            messages=two,
            prompt="Where is dark mode?",
            response="Settings > Display.",
        ),
        record(
            "interaction",
            id="d",
            time="2026-12-01T10:03:00+00:00",
            messages=[{"role": "user", "content": "Unrated?"}],
            prompt="Unrated?",
            response="Yes.",
        ),
        record(
            "interaction",
            id="e",
            time="2026-12-01T10:04:00+00:00",
            messages=[{"role": "user", "content": "Same?"}],
            prompt="Same?",
            response="Same.",
        ),
        record("feedback", id="a", rating="down", correction="Settings > Security > Reset."),
        record("feedback", id="b", rating="down", correction=None),
        record("feedback", id="c", rating="up", correction=None),
        record("feedback", id="e", rating="down", correction="Same."),
    ]
    (folder / "2026-12-01.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


TWO_TURNS = [  # the conversation before the answer, as messages for the chat template
    {"role": "user", "content": "Hi, I use the app."},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Where is dark mode?"},
]


def test_a_correction_is_a_pair_and_ratings_are_labels(tmp_path: Path) -> None:
    rows, bad = joined_rows(chat_store(tmp_path))
    assert bad == []
    by_id = {r["id"]: r for r in rows}
    assert by_id["a"]["served"] == "No idea." and by_id["a"]["response"].startswith("Settings")
    assert feedback_rows(by_id["a"], "preference") == [
        {
            "prompt": "How do I reset my password?",
            "chosen": "Settings > Security > Reset.",
            "rejected": "No idea.",
        }
    ]
    # Ratings alone are no pair; unrated answers and a "correction" that changes nothing
    # give no rows at all.
    for key in "bcde":
        assert feedback_rows(by_id[key], "preference") == []
    assert feedback_rows(by_id["a"], "unpaired") == [
        {
            "prompt": "How do I reset my password?",
            "completion": "Settings > Security > Reset.",
            "label": True,
        },
        {"prompt": "How do I reset my password?", "completion": "No idea.", "label": False},
    ]
    assert feedback_rows(by_id["b"], "unpaired") == [
        {"prompt": "Price?", "completion": "It costs a lot.", "label": False}
    ]
    # The chat's earlier turns are kept in the prompt, the served answer is the completion.
    assert feedback_rows(by_id["c"], "unpaired") == [
        {"prompt": TWO_TURNS, "completion": "Settings > Display.", "label": True}
    ]
    assert feedback_rows(by_id["d"], "unpaired") == feedback_rows(by_id["e"], "unpaired") == []


def test_supervised_formats_keep_the_positive_rows_as_before(tmp_path: Path) -> None:
    loaded = read_collected(chat_store(tmp_path), "collected/s", "instruction", {}, True)
    assert [(r["prompt"], r["response"]) for r in loaded.rows] == [
        ("How do I reset my password?", "Settings > Security > Reset."),
        ("Where is dark mode?", "Settings > Display."),
        ("Same?", "Same."),
    ]


@pytest.mark.parametrize("only_positive", [True, False])
def test_a_preference_dataset_reads_the_feedback(tmp_path: Path, only_positive: bool) -> None:
    store = chat_store(tmp_path)
    pairs = read_collected(store, "collected/s", "preference", {}, only_positive)
    assert pairs.bad == []
    assert [(r["chosen"], r["rejected"]) for r in pairs.rows] == [
        ("Settings > Security > Reset.", "No idea.")
    ]
    assert pairs.rows[0]["_source"] == "collected/s/2026-12-01.jsonl:1"
    unpaired = read_collected(store, "collected/s", "unpaired", {}, only_positive)
    assert [(r["completion"], r["label"]) for r in unpaired.rows] == [
        ("Settings > Security > Reset.", True),
        ("No idea.", False),
        ("It costs a lot.", False),
        ("Settings > Display.", True),
    ]
    assert unpaired.rows[0]["_source"].endswith(":1#1")


def test_prepare_redacts_dedups_and_decontaminates_the_pairs(tmp_path: Path) -> None:
    """The dataset steps see chosen, rejected and completion like any text field."""
    folder = tmp_path / "store"
    folder.mkdir()
    records = []
    for index, (question, served, fixed) in enumerate(
        [
            ("Mail me at jane@example.com?", "Sure.", "Write to jane@example.com instead."),
            ("Mail me at jane@example.com?", "Sure.", "Write to jane@example.com instead."),
            ("What is the capital of France asked in the eval set today?", "Rome.", "Paris."),
            ("Call me?", "No.", "Call 415-555-0134 any day."),
        ]
    ):
        messages = [{"role": "user", "content": question}]
        records.append(
            record(
                "interaction",
                id=f"r{index}",
                time="2026-12-01T10:00:00",
                messages=messages,
                prompt=question,
                response=served,
            )
        )
        records.append(record("feedback", id=f"r{index}", rating="down", correction=fixed))
    (folder / "2026-12-01.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = read_collected(folder, "collected/s", "preference", {}, False).rows
    spec = {
        "format": "preference",
        "steps": [
            {"step": "redact_pii"},
            {"step": "dedup"},
            {"step": "decontaminate", "ngram": 5},
        ],
        "splits": {"train": 1.0, "validation": 0.0, "test": 0.0},
    }
    result = prepare(
        PrepareInputs(
            name="pairs",
            spec=spec,
            sources=[SourceInput(rows=rows)],
            out=tmp_path / "out",
            eval_texts=["What is the capital of France asked in the eval set?"],
            report=lambda _: None,
        )
    )
    written = [json.loads(line) for line in (tmp_path / "out/train.jsonl").read_text().splitlines()]
    assert result.splits["train"] == 2
    assert written == [
        {
            "chosen": "Write to [EMAIL] instead.",
            "prompt": "Mail me at [EMAIL]?",
            "rejected": "Sure.",
        },
        {"chosen": "Call [PHONE] any day.", "prompt": "Call me?", "rejected": "No."},
    ]
    assert result.stats["duplicates_removed"] == 1 and result.stats["eval_overlap"] == 1


def test_the_loop_snapshot_holds_the_pairs(tmp_path: Path) -> None:
    window = collected_window(chat_store(tmp_path), "s", None, datetime(2026, 12, 2, tzinfo=UTC))
    assert [r["id"] for r in window.kept(True, "preference")] == ["a"]
    assert [r["id"] for r in window.kept(True, "unpaired")] == ["a", "b", "c"]
    assert [r["id"] for r in window.kept(True, "instruction")] == ["a", "c", "e"]
    lines = [
        json.loads(x)
        for x in snapshot_lines(window.kept(True, "unpaired"), "unpaired").splitlines()
    ]
    assert [(x["id"], x["completion"], x["label"]) for x in lines] == [
        ("a", "Settings > Security > Reset.", True),
        ("a", "No idea.", False),
        ("b", "It costs a lot.", False),
        ("c", "Settings > Display.", True),
    ]
    assert lines[-1]["prompt"] == TWO_TURNS


def test_an_arena_source_needs_a_preference_format() -> None:
    from pydantic import ValidationError

    from controller.api.dataset import DatasetSpec

    source = {"type": "arena", "arena": "duel"}
    assert DatasetSpec.model_validate({"format": "preference", "sources": [source]})
    assert DatasetSpec.model_validate({"format": "unpaired", "sources": [source]})
    with pytest.raises(ValidationError, match="source 'arena: duel' gives preference pairs"):
        DatasetSpec.model_validate({"format": "instruction", "sources": [source]})


def test_a_prompt_may_be_the_conversation_as_messages() -> None:
    from runners.data.rows import check_row
    from runners.train.preference import row_problem

    pair = {"prompt": TWO_TURNS, "chosen": "Settings > Display.", "rejected": "Nowhere."}
    label = {"prompt": TWO_TURNS, "completion": "Settings > Display.", "label": True}
    assert check_row(dict(pair), "preference") is None and check_row(label, "unpaired") is None
    assert row_problem(pair, "preference") is None and row_problem(label, "unpaired") is None
    for bad in ([], [{"role": "user"}], ["hi"]):
        assert "'prompt' must be a string or a non-empty list" in str(
            check_row({**pair, "prompt": bad}, "preference")
        )
        assert "must be a string or a non-empty list" in str(
            row_problem({**pair, "prompt": bad}, "preference")
        )
    assert check_row({**pair, "prompt": 3}, "preference") == "'prompt' must be a string, got int"
