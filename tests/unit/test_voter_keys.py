"""Issue 27, class 9 (vote stuffing), the pure parts: voter keys in the state folder, which
stored votes count, and an arena without human votes counting none."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from controller.apply.arena import votes_of
from controller.state.registry.arena import BattleRecord, VoteRecord, counted
from controller.state.voters import VoterError, VoterKeys


def test_voter_keys_identify_their_holder_only(tmp_path: Path) -> None:
    keys = VoterKeys(tmp_path)
    alice = keys.add("alice")
    assert keys.identify(alice) == "alice"
    assert keys.identify(alice + "x") is None and keys.identify(None) is None
    assert alice not in (tmp_path / "voters.json").read_text()  # only a digest is kept
    assert stat.S_IMODE((tmp_path / "voters.json").stat().st_mode) == 0o600
    with pytest.raises(VoterError, match="exists already"):
        keys.add("alice")
    renewed = keys.add("alice", replace=True)
    assert keys.identify(alice) is None and keys.identify(renewed) == "alice"
    with pytest.raises(VoterError, match="not allowed"):
        keys.add("../etc")
    keys.remove("alice")
    assert keys.identify(renewed) is None and keys.names() == []


def _vote(kind: str, voter: str, detail: dict[str, str]) -> VoteRecord:
    return VoteRecord(kind, voter, "model_a", "a_first", 0.0, detail)


def test_cookie_votes_from_before_voter_keys_are_not_counted() -> None:
    assert not counted(_vote("human", "0f" * 16, {"via": "ui"}))
    assert counted(_vote("human", "alice", {"via": "ui", "voter": "key"}))
    assert counted(_vote("human", "bob", {"via": "cli"}))
    assert counted(_vote("judge", "judge", {}))


def test_an_arena_without_human_votes_counts_none() -> None:
    battle = BattleRecord(
        1, "duel", "k", None, "q", "a@1", "b@1", "x", "y", "arena", {},
        [_vote("judge", "judge", {}), _vote("human", "alice", {"via": "cli"})],
    )  # fmt: skip
    assert {v.voter_kind for v in votes_of([battle])} == {"judge", "human"}
    assert {v.voter_kind for v in votes_of([battle], human=False)} == {"judge"}
    assert votes_of([battle], "human", human=False) == []
