"""Runner `arena`, FastChat format: read and write battle files, and votes as DPO preferences.

A battle row, as FastChat writes it (`clean_battle_*.json`, MT-bench human judgments):
`model_a`, `model_b`, `winner` (model_a, model_b, tie, tie (bothbad)), and optionally
`tstamp`, `judge`, `question_id`, `turn`, and `conversation_a` / `conversation_b` (lists
of {"role", "content"} messages). Rows may instead carry `prompt`, `answer_a`, `answer_b`.
Files are a JSON list or JSON Lines. Fields llmops does not use are kept, so a file read
and written again has the same rows with the same fields in the same order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runners.arena.outcomes import VOTER_KINDS, WINNERS, Vote, VoterKind
from runners.errors import InvalidInput

# Row fields that become the Vote, the prompt and the answers; everything else is `extra`.
_VOTE_FIELDS = ("model_a", "model_b", "winner", "judge", "voter_kind", "tstamp", "position")
_TEXT_FIELDS = ("prompt", "answer_a", "answer_b")
_FRESH_ORDER = (
    "question_id",
    "model_a",
    "model_b",
    "winner",
    "judge",
    "voter_kind",
    "position",
    "conversation_a",
    "conversation_b",
    "tstamp",
)


@dataclass
class ImportedBattle:
    """One battle: the vote, the prompt and both answers when known, and unknown fields."""

    vote: Vote
    prompt: str | None = None
    answer_a: str | None = None
    answer_b: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The row as read, so writing keeps its field order and raw values (e.g. an int
    # question_id); None for battles llmops created.
    source: dict[str, Any] | None = field(default=None, repr=False, compare=False)


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, row) for a JSON list or a JSON Lines file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInput(f"{path}: cannot read the battle file ({err})") from err
    stripped = text.lstrip()
    if not stripped:
        return
    if stripped.startswith("["):
        decoder = json.JSONDecoder()
        pos = len(text) - len(stripped) + 1
        first = True
        while True:
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
            if pos < len(text) and text[pos] == "]":
                return
            if not first:
                if pos >= len(text) or text[pos] != ",":
                    line = text.count("\n", 0, pos) + 1
                    raise InvalidInput(
                        f"{path}:{line}: expected ',' or ']' between battles in the JSON list; "
                        "fix the JSON"
                    )
                pos += 1
                while pos < len(text) and text[pos] in " \t\r\n":
                    pos += 1
            first = False
            line = text.count("\n", 0, pos) + 1
            try:
                row, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as err:
                raise InvalidInput(
                    f"{path}:{err.lineno}: not valid JSON ({err.msg}); fix the battle file"
                ) from err
            yield line, row
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as err:
            raise InvalidInput(
                f"{path}:{number}: not valid JSON ({err.msg}); each line of a JSON Lines "
                "battle file is one JSON object"
            ) from err
        yield number, row


def _conversation(where: str, name: str, value: Any) -> tuple[str | None, str | None]:
    """(prompt, answer) of a one-turn conversation; (None, None) for longer ones."""
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    ):
        raise InvalidInput(
            f"{where}: field '{name}' must be a list of messages like "
            '{"role": "user", "content": "..."}; fix or remove it'
        )
    users = [m["content"] for m in value if m["role"] == "user"]
    replies = [m["content"] for m in value if m["role"] == "assistant"]
    if len(users) == 1 and len(replies) == 1:
        return users[0], replies[0]
    return None, None


def _battle(where: str, row: Any, voter_kind: VoterKind) -> ImportedBattle:
    if not isinstance(row, dict):
        raise InvalidInput(f"{where}: a battle must be a JSON object, got {type(row).__name__}")
    for name in ("model_a", "model_b"):
        if not isinstance(row.get(name), str) or not row[name]:
            raise InvalidInput(
                f"{where}: field '{name}' is missing or not a model name; every battle needs "
                "model_a, model_b and winner"
            )
    if row["model_a"] == row["model_b"]:
        raise InvalidInput(
            f"{where}: model_a and model_b are both {row['model_a']!r}; a battle needs two "
            "different models (remove the row)"
        )
    winner = row.get("winner")
    if winner not in WINNERS:
        raise InvalidInput(
            f"{where}: field 'winner' is {winner!r}; allowed values: "
            + ", ".join(repr(w) for w in WINNERS)
        )
    tstamp = row.get("tstamp", 0.0)
    if isinstance(tstamp, bool) or not isinstance(tstamp, int | float):
        raise InvalidInput(f"{where}: field 'tstamp' is {tstamp!r}; give seconds since the epoch")
    kind = row.get("voter_kind", voter_kind)
    if kind not in VOTER_KINDS:
        raise InvalidInput(
            f"{where}: field 'voter_kind' is {kind!r}; allowed values: 'judge', 'human'"
        )
    for name in ("judge", "position", *_TEXT_FIELDS):
        if row.get(name) is not None and not isinstance(row[name], str):
            raise InvalidInput(f"{where}: field '{name}' must be a string, got {row[name]!r}")
    question_id = row.get("question_id")
    if question_id is not None and not isinstance(question_id, str | int):
        raise InvalidInput(
            f"{where}: field 'question_id' is {question_id!r}; give a string or an integer"
        )
    vote = Vote(
        model_a=row["model_a"],
        model_b=row["model_b"],
        winner=winner,
        voter_kind=kind,
        voter_id=row.get("judge") or "",
        tstamp=float(tstamp),
        position=row.get("position") or "",
        question_id=None if question_id is None else str(question_id),
    )
    prompt, answer_a, answer_b = (row.get(name) for name in _TEXT_FIELDS)
    if "conversation_a" in row and "conversation_b" in row:
        prompt_a, found_a = _conversation(where, "conversation_a", row["conversation_a"])
        prompt_b, found_b = _conversation(where, "conversation_b", row["conversation_b"])
        if prompt is None and prompt_a is not None and prompt_a == prompt_b:
            prompt = prompt_a
        answer_a = answer_a if answer_a is not None else found_a
        answer_b = answer_b if answer_b is not None else found_b
    used = {*_VOTE_FIELDS, *_TEXT_FIELDS, "question_id"}
    extra = {key: value for key, value in row.items() if key not in used}
    return ImportedBattle(vote, prompt, answer_a, answer_b, extra, source=dict(row))


def read_battles(path: Path, *, voter_kind: VoterKind = "human") -> list[ImportedBattle]:
    """Battles from a FastChat battle file; InvalidInput names the file, line and field.

    `voter_kind` applies to rows without their own `voter_kind` field (FastChat's arena
    battles are people's votes).
    """
    return [_battle(f"{path}:{line}", row, voter_kind) for line, row in _rows(path)]


def _row(battle: ImportedBattle) -> dict[str, Any]:
    vote, source = battle.vote, battle.source or {}
    row: dict[str, Any] = {"model_a": vote.model_a, "model_b": vote.model_b, "winner": vote.winner}

    def kept(name: str, value: Any) -> Any:
        """The raw value read, when it means the same (81 for "81", None for "")."""
        raw = source.get(name)
        same = (raw if raw is not None else (0.0 if name == "tstamp" else "")) == value
        return raw if name in source and (same or str(raw) == value) else value

    if vote.question_id is not None or "question_id" in source:
        row["question_id"] = kept("question_id", vote.question_id)
    if vote.voter_id or "judge" in source:
        row["judge"] = kept("judge", vote.voter_id)
    if battle.source is None or "voter_kind" in source:
        row["voter_kind"] = vote.voter_kind
    if vote.tstamp or "tstamp" in source:
        row["tstamp"] = kept("tstamp", vote.tstamp)
    if vote.position or "position" in source:
        row["position"] = kept("position", vote.position)
    row.update(battle.extra)
    texts = {"prompt": battle.prompt, "answer_a": battle.answer_a, "answer_b": battle.answer_b}
    if any(name in source for name in _TEXT_FIELDS):
        row.update({name: text for name, text in texts.items() if text is not None})
    elif "conversation_a" not in row and battle.prompt is not None:
        for side, answer in (("a", battle.answer_a), ("b", battle.answer_b)):
            if answer is not None:
                row[f"conversation_{side}"] = [
                    {"role": "user", "content": battle.prompt},
                    {"role": "assistant", "content": answer},
                ]
    order = list(source) if battle.source is not None else list(_FRESH_ORDER)
    rank = {key: index for index, key in enumerate(order)}
    return dict(sorted(row.items(), key=lambda item: rank.get(item[0], len(rank))))


def write_battles(battles: Sequence[ImportedBattle], path: Path) -> None:
    """Write FastChat's format: JSON Lines when the name ends in .jsonl, else a JSON list."""
    rows = [_row(battle) for battle in battles]
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    else:
        text = json.dumps(rows, ensure_ascii=False, indent=2) + "\n"
    path.write_text(text, encoding="utf-8")


def preference_rows(battles: Sequence[ImportedBattle]) -> list[dict[str, str]]:
    """DPO rows {prompt, chosen, rejected} from decisive battles whose answers are known."""
    rows = []
    for battle in battles:
        winner = battle.vote.winner
        if winner not in ("model_a", "model_b"):
            continue
        if battle.prompt is None or battle.answer_a is None or battle.answer_b is None:
            continue
        chosen, rejected = (
            (battle.answer_a, battle.answer_b)
            if winner == "model_a"
            else (battle.answer_b, battle.answer_a)
        )
        rows.append({"prompt": battle.prompt, "chosen": chosen, "rejected": rejected})
    return rows
