"""Apply, arena blind voting: the one ballot logic behind `llmops arena vote` and the dashboard.

Two answers in an order random per (battle, voter), model names only after the vote, one
vote per voter and battle (the registry's unique constraint), the choice on the blind page
turned back into the stored winner."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from controller.state.registry.arena import ArenaStore

# What a voter may answer on a blind ballot, with the words the pages show.
CHOICES = {
    "first": "Answer 1 is better",
    "second": "Answer 2 is better",
    "tie": "Tie",
    "bothbad": "Both are bad",
}


def blind_order(battle_id: int, voter_id: str) -> bool:
    """Whether a voter sees model_b's answer first: random per (battle, voter), repeatable."""
    return random.Random(f"{battle_id}:{voter_id}").random() < 0.5


def _human_vote(battle: Any, voter: str) -> Any | None:
    return next((v for v in battle.votes if v.voter_kind == "human" and v.voter_id == voter), None)


def pending_battles(battles: Iterable[Any], voter: str) -> list[Any]:
    """Battles with both answers that this voter has not voted on."""
    return [
        b
        for b in battles
        if b.answer_a is not None and b.answer_b is not None and _human_vote(b, voter) is None
    ]


@dataclass(frozen=True)
class Ballot:
    """One battle as a voter sees it: the prompt and two answers, no model names."""

    battle_id: int
    prompt: str
    first: str
    second: str


def ballot(battle: Any, voter: str) -> Ballot:
    swapped = blind_order(battle.id, voter)
    first, second = (
        (battle.answer_b, battle.answer_a) if swapped else (battle.answer_a, battle.answer_b)
    )
    return Ballot(battle.id, battle.prompt or "", first or "", second or "")


def revealed_models(battle: Any, voter: str) -> tuple[str, str, str] | None:
    """(the model behind answer 1, behind answer 2, the stored winner), only once this voter
    has voted on the battle."""
    mine = _human_vote(battle, voter)
    if mine is None:
        return None
    swapped = blind_order(battle.id, voter)
    first, second = (
        (battle.model_b, battle.model_a) if swapped else (battle.model_a, battle.model_b)
    )
    return first, second, str(mine.winner)


def winner_of(choice: str, swapped: bool) -> str:
    """The stored winner for a choice made on a blind ballot."""
    if choice == "first":
        return "model_b" if swapped else "model_a"
    if choice == "second":
        return "model_a" if swapped else "model_b"
    if choice == "tie":
        return "tie"
    if choice == "bothbad":
        return "tie (bothbad)"
    raise ValueError(f"unknown choice '{choice}'")


def cast(store: ArenaStore, battle_id: int, voter: str, choice: str, via: str) -> None:
    """Store a person's vote; AlreadyVoted when this voter voted on the battle before."""
    swapped = blind_order(battle_id, voter)
    detail = {"via": via, "voter": "key"} if via == "ui" else {"via": via}
    store.add_vote(
        battle_id,
        voter_kind="human",
        voter_id=voter,
        winner=winner_of(choice, swapped),
        position="b_first" if swapped else "a_first",
        detail=detail,
    )
