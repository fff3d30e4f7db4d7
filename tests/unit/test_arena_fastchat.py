"""Arena FastChat format: import and export round-trip; bad rows named; DPO preferences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runners.arena.fastchat import ImportedBattle, preference_rows, read_battles, write_battles
from runners.arena.outcomes import Vote
from runners.errors import InvalidInput


def conversation(prompt: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


ROWS = [
    {  # FastChat's arena battles (clean_battle_*.json)
        "model_a": "vicuna-13b",
        "model_b": "alpaca-13b",
        "winner": "model_a",
        "judge": "arena_user_973",
        "turn": 1,
        "anony": True,
        "language": "English",
        "tstamp": 1682351591.1322,
        "conversation_a": conversation("What is 2+2?", "4."),
        "conversation_b": conversation("What is 2+2?", "Five, probably."),
        "question_id": "a1b2c3",
    },
    {  # MT-bench human judgments: an integer question_id, two turns
        "question_id": 81,
        "model_a": "gpt-4",
        "model_b": "llama-13b",
        "winner": "tie (bothbad)",
        "judge": "expert_0",
        "conversation_a": [
            *conversation("Write a poem.", "Roses."),
            *conversation("Shorter.", "R."),
        ],
        "conversation_b": [
            *conversation("Write a poem.", "No."),
            *conversation("Shorter.", "N."),
        ],
        "turn": 2,
        "tstamp": 1687221890,
    },
    {"model_a": "x", "model_b": "y", "winner": "tie"},
    {"model_b": "y", "model_a": "x", "winner": "model_b", "tstamp": 2.5, "judge": None},
]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_import_then_export_round_trips(tmp_path: Path, suffix: str) -> None:
    source = tmp_path / f"battles{suffix}"
    if suffix == ".jsonl":
        source.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    else:
        source.write_text(json.dumps(ROWS, indent=1))
    battles = read_battles(source)
    first = battles[0]
    assert first.vote == Vote(
        "vicuna-13b",
        "alpaca-13b",
        "model_a",
        voter_kind="human",
        voter_id="arena_user_973",
        tstamp=1682351591.1322,
        question_id="a1b2c3",
    )
    assert (first.prompt, first.answer_a, first.answer_b) == (
        "What is 2+2?",
        "4.",
        "Five, probably.",
    )
    assert first.extra["anony"] is True and first.extra["turn"] == 1
    second = battles[1]
    assert second.vote.question_id == "81" and second.vote.winner == "tie (bothbad)"
    assert second.prompt is None  # two turns: kept, but no single prompt
    assert battles[3].vote.tstamp == 2.5 and battles[3].vote.voter_id == ""
    out = tmp_path / f"out{suffix}"
    write_battles(battles, out)
    text = out.read_text()
    back = (
        [json.loads(line) for line in text.splitlines()]
        if suffix == ".jsonl"
        else (json.loads(text))
    )
    assert back == ROWS
    assert [list(row) for row in back] == [list(row) for row in ROWS]  # same field order
    assert [b.vote for b in read_battles(out)] == [b.vote for b in battles]


def test_battles_llmops_made_export_as_fastchat_rows(tmp_path: Path) -> None:
    battle = ImportedBattle(
        Vote("a", "b", "model_b", voter_id="judge-7b", tstamp=10.0, question_id="q1"),
        prompt="Hi?",
        answer_a="Hello.",
        answer_b="Hi! How can I help?",
    )
    out = tmp_path / "made.jsonl"
    write_battles([battle], out)
    row = json.loads(out.read_text())
    assert row == {
        "question_id": "q1",
        "model_a": "a",
        "model_b": "b",
        "winner": "model_b",
        "judge": "judge-7b",
        "voter_kind": "judge",
        "conversation_a": conversation("Hi?", "Hello."),
        "conversation_b": conversation("Hi?", "Hi! How can I help?"),
        "tstamp": 10.0,
    }
    again = read_battles(out)[0]
    assert again.vote == battle.vote  # voter_kind survives: not taken for a human vote
    assert (again.prompt, again.answer_a, again.answer_b) == (
        "Hi?",
        "Hello.",
        "Hi! How can I help?",
    )


def test_prompt_and_answer_fields_are_read_and_kept(tmp_path: Path) -> None:
    rows = [{"model_a": "a", "model_b": "b", "winner": "model_a", "prompt": "P", "answer_a": "1",
             "answer_b": "2", "voter_kind": "judge"}]  # fmt: skip
    path = tmp_path / "plain.json"
    path.write_text(json.dumps(rows))
    battles = read_battles(path)
    assert battles[0].vote.voter_kind == "judge"
    assert (battles[0].prompt, battles[0].answer_a, battles[0].answer_b) == ("P", "1", "2")
    write_battles(battles, tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == rows


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_bad_winner_names_file_line_field_and_allowed_values(tmp_path: Path, suffix: str) -> None:
    good = {"model_a": "a", "model_b": "b", "winner": "model_a"}
    bad = {"model_a": "a", "model_b": "b", "winner": "draw"}
    path = tmp_path / f"battles{suffix}"
    if suffix == ".jsonl":
        path.write_text(
            json.dumps(good) + "\n\n" + json.dumps(good) + "\n" + json.dumps(bad) + "\n"
        )
        line = 4
    else:
        path.write_text("[\n" + json.dumps(good) + ",\n" + json.dumps(good, indent=1) + ",\n"
                        + json.dumps(bad) + "\n]\n")  # fmt: skip
        line = 8
    with pytest.raises(InvalidInput) as caught:
        read_battles(path)
    message = str(caught.value)
    assert f"{path}:{line}:" in message
    assert "'winner'" in message and "'draw'" in message
    assert "'tie (bothbad)'" in message
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ({"model_b": "b", "winner": "tie"}, "'model_a' is missing"),
        ({"model_a": "a", "model_b": "a", "winner": "tie"}, "two different models"),
        ({"model_a": "a", "model_b": "b", "winner": "tie", "tstamp": "yesterday"}, "'tstamp'"),
        ({"model_a": "a", "model_b": "b", "winner": "tie", "voter_kind": "bot"}, "'voter_kind'"),
        (
            {
                "model_a": "a",
                "model_b": "b",
                "winner": "tie",
                "conversation_a": "hi",
                "conversation_b": [],
            },
            "'conversation_a' must be a list of messages",
        ),
        (["a", "b", "tie"], "must be a JSON object"),
    ],
)
def test_other_bad_rows(tmp_path: Path, row: object, words: str) -> None:
    path = tmp_path / "b.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(InvalidInput, match=words) as caught:
        read_battles(path)
    assert f"{path}:1:" in str(caught.value)


def test_broken_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text('[\n{"model_a": "a", "model_b": "b", "winner": "tie"},\n{"model_a": }\n]')
    with pytest.raises(InvalidInput, match=r"b\.json:3: not valid JSON"):
        read_battles(path)
    path.write_text('[\n{"model_a": "a", "model_b": "b", "winner": "tie"}\n{"x": 1}]')
    with pytest.raises(InvalidInput, match=r"b\.json:3: expected ','"):
        read_battles(path)
    (tmp_path / "empty.jsonl").write_text("\n")
    assert read_battles(tmp_path / "empty.jsonl") == []
    with pytest.raises(InvalidInput, match="cannot read"):
        read_battles(tmp_path / "missing.json")


def test_preference_rows_from_decisive_battles_with_answers() -> None:
    def battle(winner: str, a: str | None = "A says", b: str | None = "B says") -> ImportedBattle:
        return ImportedBattle(Vote("a", "b", winner), prompt="P", answer_a=a, answer_b=b)  # type: ignore[arg-type]

    rows = preference_rows(
        [
            battle("model_a"),
            battle("model_b"),
            battle("tie"),
            battle("tie (bothbad)"),
            battle("model_a", b=None),
            ImportedBattle(Vote("a", "b", "model_a")),
        ]
    )
    assert rows == [
        {"prompt": "P", "chosen": "A says", "rejected": "B says"},
        {"prompt": "P", "chosen": "B says", "rejected": "A says"},
    ]
