"""Reading a serving store: interactions joined with feedback, then mapped like a source."""

from __future__ import annotations

import json
from pathlib import Path

from runners.data.collected import joined_rows, read_collected


def write(store: Path, name: str, records: list[dict | str]) -> None:
    store.mkdir(parents=True, exist_ok=True)
    (store / name).write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    )


def interaction(id: str, question: str, answer: str) -> dict:
    return {
        "type": "interaction",
        "id": id,
        "messages": [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": question},
        ],
        "prompt": question,
        "response": answer,
        "usage": {},
    }


def feedback(id: str, rating: str, correction: str | None = None) -> dict:
    return {"type": "feedback", "id": id, "rating": rating, "correction": correction}


def store(tmp_path: Path) -> Path:
    folder = tmp_path / "collected" / "support"
    write(
        folder,
        "2026-11-24.jsonl",
        [
            interaction("a", "Reset password?", "No idea."),
            interaction("b", "Export data?", "Settings > Data."),
            feedback("a", "down", "Use Settings > Security."),
        ],
    )
    write(
        folder,
        "2026-11-25.jsonl",
        [
            interaction("c", "Price?", "Free."),
            interaction("d", "Dark mode?", "Yes."),
            feedback("b", "down"),
            feedback("b", "up"),  # the latest verdict wins
            feedback("c", "down"),
            {"prompt": "Imported?", "response": "Rows without a type are kept as they are."},
        ],
    )
    return folder


def test_feedback_joins_onto_interactions(tmp_path: Path) -> None:
    rows, bad = joined_rows(store(tmp_path), "collected/support")
    assert bad == []
    by_id = {r.get("id"): r for r in rows}
    corrected = by_id["a"]
    assert corrected["response"] == "Use Settings > Security."
    assert corrected["messages"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Reset password?"},
        {"role": "assistant", "content": "Use Settings > Security."},
    ]
    assert (corrected["rating"], corrected["corrected"]) == ("down", True)
    assert by_id["b"]["rating"] == "up" and by_id["b"]["response"] == "Settings > Data."
    assert by_id["d"]["rating"] is None
    assert by_id[None] == {
        "prompt": "Imported?",
        "response": "Rows without a type are kept as they are.",
        "_source": "collected/support/2026-11-25.jsonl:6",
    }
    assert corrected["_source"] == "collected/support/2026-11-24.jsonl:1"


def test_only_positive_keeps_rated_up_and_corrected(tmp_path: Path) -> None:
    folder = store(tmp_path)
    chats = read_collected(folder, "collected/support", "chat", {}, only_positive=True)
    answers = [row["messages"][-1]["content"] for row in chats.rows]
    assert answers == ["Use Settings > Security.", "Settings > Data."]
    assert all(set(row) == {"messages", "_source"} for row in chats.rows)
    pairs = read_collected(folder, "collected/support", "instruction", {}, only_positive=False)
    assert [r["prompt"] for r in pairs.rows] == [
        "Reset password?",
        "Export data?",
        "Price?",
        "Dark mode?",
        "Imported?",
    ]


def test_mapping_and_bad_lines_are_reported_with_their_place(tmp_path: Path) -> None:
    folder = store(tmp_path)
    write(folder, "2026-11-26.jsonl", ["{not json", "[1]", interaction("e", "Q", "A")])
    loaded = read_collected(
        folder, "collected/support", "instruction", {"prompt": "question"}, only_positive=False
    )
    problems = [b.render() for b in loaded.bad]
    assert problems[:2] == [
        "collected/support/2026-11-26.jsonl:1: invalid JSON: Expecting property name enclosed "
        "in double quotes",
        "collected/support/2026-11-26.jsonl:2: not a JSON object",
    ]
    assert "collected/support/2026-11-24.jsonl:1: missing field question (mapped to prompt)" in (
        problems
    )
    assert loaded.rows == []


def test_an_empty_or_missing_store_has_no_rows(tmp_path: Path) -> None:
    assert joined_rows(tmp_path / "nothing") == ([], [])
