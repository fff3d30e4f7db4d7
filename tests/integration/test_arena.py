"""Arena end to end on tiny real models: apply, a position-biased judge, blind human votes,
reuse of stored battles, gates on the rating difference, FastChat and DPO export."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.state.lockfile import ArenaOutputs, read_lock
from controller.state.registry.arena import AlreadyVoted, ArenaStore
from controller.workspace import open_registry
from tests.conftest import PROJECT_ROOT
from tests.tiny import add_duel_contenders, duel_arena, model_spec

ARENA = duel_arena(limit=8, battles=6, rounds=200)
GATES = """
  gates:
    - {candidate: tiny, baseline: mute, margin: 0, voters: human}
    - {candidate: mute, baseline: tiny, margin: 0, voters: human}
"""


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path) -> Path:
    root = tmp_path / "repo"
    for folder in ("specs/models", "specs/arenas", "data", "models"):
        (root / folder).mkdir(parents=True)
    shutil.copytree(tiny_model, root / "models/tiny")
    (root / "specs/models/tiny.yaml").write_text(
        model_spec("tiny", {"type": "local", "path": "models/tiny"})
    )
    add_duel_contenders(tiny_model, root)  # mute, and a judge biased to position A
    (root / "specs/arenas/duel.yaml").write_text(ARENA)
    rows = (PROJECT_ROOT / "data/evals/support-faq-eval.jsonl").read_text().splitlines()[:8]
    (root / "data/eval.jsonl").write_text("\n".join(rows) + "\n")
    return root


def cli_json(run_cli: Callable[..., Any], root: Path, *args: str) -> Any:
    done = run_cli(*args, "--json", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def check_apply_runs_the_arena_and_a_biased_judge_gives_ties(
    repo: Path, run_cli: Callable[..., Any]
) -> None:
    done = run_cli("apply", cwd=repo)
    assert done.returncode == 0, done.stdout + done.stderr
    entry = read_lock(repo / "llmops.lock").get("Arena/duel")
    assert entry is not None and isinstance(entry.outputs, ArenaOutputs)
    outputs = entry.outputs
    assert outputs.models == {"tiny": "tiny@1", "mute": "mute@1"}
    assert outputs.battles == 6 and outputs.unparseable == 0
    assert outputs.votes == {"judge": 6}
    battles = ArenaStore(open_registry(repo)).battles("duel")
    # The judge said "A" in both orders every time: never a winner, always a tie.
    winners = [v.winner for b in battles for v in b.votes]
    assert winners == ["tie"] * 6
    assert all(len(v.detail["verdicts"]) == 2 for b in battles for v in b.votes)
    assert all(b.answer_a is not None and b.answer_b == "" for b in battles)  # mute says nothing
    ratings = {s.model: s.rating for s in outputs.leaderboard}
    assert ratings["tiny@1"] == pytest.approx(ratings["mute@1"], abs=1.0)
    assert {s.rank for s in outputs.leaderboard} == {1}  # overlapping intervals share a rank
    # The judge's verdict flips with the answer order on every battle, and says so.
    assert outputs.judge is not None and outputs.judge.judge == "judge@1"
    assert outputs.judge.position_bias == 1.0 and outputs.judge.both_orders == 6
    assert outputs.judge.shared == 0 and outputs.judge.counted


def check_a_rerun_reuses_every_answer_and_verdict(repo: Path, run_cli: Callable[..., Any]) -> None:
    again = run_cli("arena", "run", "duel", cwd=repo)
    assert again.returncode == 0, again.stderr
    assert "0 answer(s) generated, 0 battle(s) judged now" in again.stderr
    plan = run_cli("plan", "--json", cwd=repo)
    assert '"Arena/duel"' in plan.stdout and '"noop"' in plan.stdout


def check_votes_are_blind_once_per_voter_and_move_the_human_leaderboard(
    repo: Path, run_cli: Callable[..., Any]
) -> None:
    command = [sys.executable, "-m", "controller.cli.main", "arena", "vote", "duel"]
    session = subprocess.run(
        [*command, "--voter", "alice", "--count", "1"],
        cwd=repo,
        input="t\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert session.returncode == 0, session.stderr
    shown = session.stdout
    prompt_at = shown.index("Better answer")
    assert "tiny@1" not in shown[:prompt_at] and "mute@1" not in shown[:prompt_at]
    assert "was tiny@1" in shown[prompt_at:] or "was mute@1" in shown[prompt_at:]
    store = ArenaStore(open_registry(repo))
    battles = store.battles("duel")
    voted = [b for b in battles if any(v.voter_id == "alice" for v in b.votes)]
    assert len(voted) == 1 and voted[0].votes[-1].winner == "tie"  # alice typed "t"
    # Everyone else prefers the model that answers at all, as a person would.
    for battle in battles:
        winner = "model_a" if battle.model_a == "tiny@1" else "model_b"
        store.add_vote(battle.id, voter_kind="human", voter_id="bob", winner=winner)
    with pytest.raises(AlreadyVoted):
        store.add_vote(battles[0].id, voter_kind="human", voter_id="bob", winner="tie")
    board = cli_json(run_cli, repo, "arena", "leaderboard", "duel", "--voters", "human")
    first, second = board["standings"]
    assert first["model"] == "tiny@1" and second["model"] == "mute@1"
    assert first["rating"] > second["rating"]
    assert first["battles"] == 7 and first["ties"] == 1


def check_gates_read_the_lower_bound_of_the_rating_difference(
    repo: Path, run_cli: Callable[..., Any]
) -> None:
    spec = repo / "specs/arenas/duel.yaml"
    spec.write_text(ARENA + GATES)
    try:
        done = run_cli("arena", "run", "duel", cwd=repo)
    finally:
        spec.write_text(ARENA)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "gate rating/tiny not_worse_than mute: pass" in done.stdout
    assert "gate rating/mute not_worse_than tiny: FAIL" in done.stdout


def check_export_then_import_round_trips_and_exports_preferences(
    repo: Path, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    log = tmp_path / "battles.jsonl"
    done = run_cli("arena", "export", "duel", "--out", str(log), cwd=repo)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 6 + 1 + 6  # judge ties, alice's tie, bob's wins
    assert {r["winner"] for r in rows} == {"tie", "model_a"}  # tiny is model_a, as listed
    imported = cli_json(run_cli, repo, "arena", "import", str(log), "--arena", "copy")
    assert imported == {"arena": "copy", "added": 13, "already": 0}
    again = cli_json(run_cli, repo, "arena", "import", str(log), "--arena", "copy")
    assert again == {"arena": "copy", "added": 0, "already": 13}
    log_again = tmp_path / "again.jsonl"
    assert run_cli("arena", "export", "copy", "--out", str(log_again), cwd=repo).returncode == 0
    assert [json.loads(line) for line in log_again.read_text().splitlines()] == rows
    original = cli_json(run_cli, repo, "arena", "leaderboard", "duel")
    copied = cli_json(run_cli, repo, "arena", "leaderboard", "copy")
    assert [(s["model"], s["rating"]) for s in copied["standings"]] == [
        (s["model"], s["rating"]) for s in original["standings"]
    ]
    dpo = tmp_path / "preferences.jsonl"
    done = run_cli("arena", "export", "duel", "--out", str(dpo), "--format", "dpo", cwd=repo)
    assert done.returncode == 0, done.stderr
    preferences = [json.loads(line) for line in dpo.read_text().splitlines()]
    assert len(preferences) == 6  # bob's decisive votes; ties are not preferences
    assert all(p["rejected"] == "" and p["chosen"] for p in preferences)


def test_arena_from_apply_to_export(
    repo: Path, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    """One story, in order (each step reads what the one before stored)."""
    check_apply_runs_the_arena_and_a_biased_judge_gives_ties(repo, run_cli)
    check_a_rerun_reuses_every_answer_and_verdict(repo, run_cli)
    check_votes_are_blind_once_per_voter_and_move_the_human_leaderboard(repo, run_cli)
    check_gates_read_the_lower_bound_of_the_rating_difference(repo, run_cli)
    check_export_then_import_round_trips_and_exports_preferences(repo, run_cli, tmp_path)
