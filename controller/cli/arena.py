"""CLI `llmops arena run|leaderboard|vote|voters|import|export`: thin commands over
apply/arena."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from controller.api.arena import ArenaSpec, Bootstrap
from controller.apply.arena import (
    ArenaRunner,
    import_battles,
    judge_quality,
    votes_of,
)
from controller.apply.blind_vote import ballot, cast, pending_battles, revealed_models
from controller.cli.common import (
    Exit,
    JsonOption,
    RootOption,
    console,
    err_console,
    fail,
    load_or_exit,
    open_registry_or_fail,
    resolve_root,
)
from controller.observe.leaderboard import (
    endpoint_lines,
    judge_lines,
    no_decision_note,
    outcomes_of,
    separation_note,
    shown_ranks,
)
from controller.report.terminal import gate_line
from controller.state.paths import StatePaths
from controller.state.registry.arena import AlreadyVoted, ArenaStore, export_battles
from controller.state.voters import VoterError, VoterKeys
from controller.workspace import load
from runners.arena.fastchat import preference_rows, read_battles, write_battles

arena_app = typer.Typer(
    help="Pairwise battles between models: run, vote, leaderboards.",
    no_args_is_help=True,
)
Voters = Annotated[str, typer.Option("--voters", help="Whose votes count: all, judge or human.")]
voters_app = typer.Typer(
    help="Who may vote on the dashboard: one key per person, made here.",
    no_args_is_help=True,
)
arena_app.add_typer(voters_app, name="voters")


def print_board(board: Any, title: str, unparseable: int = 0) -> None:
    """The leaderboard with ranks only where the data separates models, the counted votes
    by outcome, and a note when no vote was decided or no interval separates models."""
    outcomes = outcomes_of(board.standings, unparseable)
    ranks = [s.rank for s in board.standings]
    table = Table(title=title, caption=escape(outcomes.line()))
    for column in ("rank", "model", "rating", "95% interval", "battles", "win rate", "note"):
        table.add_column(column, justify="left" if column in ("model", "note") else "right")
    for s, rank in zip(board.standings, shown_ranks(ranks, outcomes.decided), strict=True):
        table.add_row(
            rank or "–",
            escape(s.model),
            f"{s.rating:.0f}",
            f"[{s.lower:.0f}, {s.upper:.0f}]",
            str(s.battles),
            f"{s.win_rate:.0%}",
            escape(s.flag or ""),
        )
    console.print(table)
    note = no_decision_note(outcomes) or separation_note(ranks, outcomes.decided)
    if note:
        console.print(escape(note))


def _runner(top: Path) -> ArenaRunner:
    return ArenaRunner(load_or_exit(top), open_registry_or_fail(top), err_console)


@arena_app.command("run")
def run(
    name: Annotated[str, typer.Argument(help="Arena spec name.")],
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Answer, battle and judge what is not stored yet, then rate.

    Exit 1 when a gate fails.
    """
    runner = _runner(resolve_root(root))
    result = runner.run(name)
    outputs = result.outputs()
    if as_json:
        document = outputs.model_dump(mode="json")
        document["leaderboards"] = {k: v.as_dict() for k, v in result.boards.items()}
        console.print_json(json.dumps(document))
    else:
        err_console.print(
            f"{len(result.battles)} battle(s): {result.generated} answer(s) generated, "
            f"{result.judged} battle(s) judged now, {result.unparseable} unparseable verdict(s)"
        )
        print_board(result.boards["all"], f"arena {name}", outputs.unparseable)
        for line in judge_lines(outputs.judge) + endpoint_lines(outputs.endpoints):
            console.print(escape(line))
        for gate_name, gate in result.gates.items():
            console.print(gate_line(gate_name, gate.passed, gate.detail))
    if outputs.failed_gates:
        raise typer.Exit(Exit.FAILED)


@arena_app.command("leaderboard")
def leaderboard_command(
    name: Annotated[str, typer.Argument(help="Arena name (a spec, or one filled by import).")],
    voters: Voters = "all",
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ratings from every stored vote, with bootstrap intervals."""
    from runners.arena.ratings import leaderboard

    if voters not in ("all", "judge", "human"):
        raise fail(f"--voters must be all, judge or human, not '{voters}'", Exit.INVALID)
    top = resolve_root(root)
    store = ArenaStore(open_registry_or_fail(top))
    battles = store.battles(name)
    if not battles:
        known = store.arenas()
        raise fail(
            f"arena '{name}' has no battles; run 'llmops arena run {name}' or import a log"
            + (f" (arenas with battles: {', '.join(known)})" if known else ""),
        )
    boot = _bootstrap(top, name)
    quality = _judge_quality(top, name, battles)
    judge_counts = quality is None or quality.counted or voters == "judge"
    board = leaderboard(
        votes_of(battles, voters, human=_human_votes(top, name), judge=judge_counts), **boot
    )
    if as_json:
        document = board.as_dict()
        document["judge"] = None if quality is None else quality.model_dump(mode="json")
        document["endpoints"] = _endpoints(top, name)
        console.print_json(json.dumps(document))
        return
    unparseable = (
        sum(1 for b in battles for v in b.votes if v.winner is None) if voters != "human" else 0
    )
    print_board(board, f"arena {name} ({voters} votes, {board.battles} counted)", unparseable)
    for line in judge_lines(quality) + endpoint_lines(_endpoints(top, name)):
        console.print(escape(line))


def _endpoints(top: Path, name: str) -> dict[str, Any]:
    """The endpoint contestants' identity, latency and token usage as the last run recorded
    them (never a key); {} for an arena without endpoints."""
    recorded = StatePaths.for_repo(top).arena(name) / "leaderboard.json"
    try:
        endpoints = json.loads(recorded.read_text()).get("endpoints") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return endpoints if isinstance(endpoints, dict) else {}


def _judge_quality(top: Path, name: str, battles: list[Any]) -> Any:
    """The judge's position bias and agreement with people, for an arena with a spec and a
    judge (its voter id as the last run recorded it); None otherwise."""
    loaded = load(top)
    resource = loaded.desired.resources.get(f"Arena/{name}") if loaded.desired else None
    if resource is None:
        return None
    label = None
    recorded = StatePaths.for_repo(top).arena(name) / "leaderboard.json"
    try:
        label = (json.loads(recorded.read_text()).get("judge") or {}).get("judge")
    except (OSError, ValueError, AttributeError):
        label = None
    return judge_quality(resource.spec_as(ArenaSpec), battles, label)


def _bootstrap(top: Path, name: str) -> dict[str, Any]:
    """The spec's bootstrap settings when the arena has a spec, else the defaults."""
    loaded = load(top)
    resource = loaded.desired.resources.get(f"Arena/{name}") if loaded.desired else None
    return (resource.spec_as(ArenaSpec).bootstrap if resource else Bootstrap()).model_dump()


def _human_votes(top: Path, name: str) -> bool:
    """Whether the arena's spec takes human votes (`human_votes: true`); an arena with no spec
    (filled by import) keeps the votes its log brought."""
    loaded = load(top)
    resource = loaded.desired.resources.get(f"Arena/{name}") if loaded.desired else None
    return True if resource is None else resource.spec_as(ArenaSpec).human_votes


def default_voter() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "anonymous"


@arena_app.command("vote")
def vote(
    name: Annotated[str, typer.Argument(help="Arena name.")],
    voter: Annotated[
        str | None, typer.Option("--voter", help="Who votes (default: your user name).")
    ] = None,
    count: Annotated[int, typer.Option("--count", min=1, help="Battles to vote on.")] = 10,
    root: RootOption = None,
) -> None:
    """Vote blind in the terminal: two answers in random order.

    The models' names are shown after the vote.
    """
    top = resolve_root(root)
    resource = load_or_exit(top).desired.resources.get(f"Arena/{name}")
    if resource is None or not resource.spec_as(ArenaSpec).human_votes:
        raise fail(
            f"arena '{name}' does not take human votes: its spec needs 'human_votes: true'"
            + ("" if resource else " (there is no Arena spec of that name)"),
            Exit.INVALID,
        )
    store = ArenaStore(open_registry_or_fail(top))
    # The terminal voter is the OS user (or --voter): whoever runs this can write the state
    # folder anyway. Votes share one namespace with the dashboard's voter names, so a person
    # voting in both places under one name still counts once per battle.
    who = voter or default_voter()
    pending = pending_battles(store.battles(name), who)
    if not pending:
        console.print(f"nothing to vote on in arena '{name}' for {who}")
        return
    choices = {"1": "first", "2": "second", "t": "tie", "b": "bothbad"}
    stored = 0
    for battle in pending[:count]:
        shown = ballot(battle, who)
        console.rule(f"battle {battle.id}")
        console.print(f"[bold]Prompt[/bold]\n{escape(shown.prompt)}\n")
        console.print(f"[bold]Answer 1[/bold]\n{escape(shown.first)}\n")
        console.print(f"[bold]Answer 2[/bold]\n{escape(shown.second)}\n")
        answer = (
            typer.prompt("Better answer: 1, 2, t (tie), b (both bad), s (skip), q (quit)")
            .strip()
            .lower()
        )
        if answer == "q":
            break
        if answer not in choices:
            console.print("skipped")
            continue
        try:
            cast(store, battle.id, who, choices[answer], via="cli")
        except AlreadyVoted:
            console.print(f"{who} has voted on battle {battle.id} already; not counted again")
            continue
        stored += 1
        models = revealed_models(store.battle(battle.id), who)
        if models:
            console.print(f"Answer 1 was {models[0]}, answer 2 was {models[1]}.")
    console.print(f"{stored} vote(s) stored for {who}")


def _voter_keys(root: Path | None) -> VoterKeys:
    return VoterKeys(StatePaths.for_repo(resolve_root(root)).root)


@voters_app.command("add")
def voters_add(
    name: Annotated[str, typer.Argument(help="The person's name, as votes will record it.")],
    replace: Annotated[
        bool, typer.Option("--replace", help="A new key for an existing voter (voids the old).")
    ] = False,
    root: RootOption = None,
) -> None:
    """Make a voter key and print it once, for the dashboard's vote page.

    The person signs in on the dashboard's vote page with it. Votes are recorded under NAME,
    one per battle.
    """
    try:
        key = _voter_keys(root).add(name, replace=replace)
    except VoterError as err:
        raise fail(str(err), Exit.INVALID) from err
    err_console.print(
        f"voter key for {name} (shown once; give it to {name} only, "
        "who pastes it on the dashboard's vote page):"
    )
    print(key)


@voters_app.command("list")
def voters_list(root: RootOption = None, as_json: JsonOption = False) -> None:
    """The voters who hold a key (the keys themselves are not stored)."""
    names = _voter_keys(root).names()
    if as_json:
        print(json.dumps(names))
        return
    for name in names:
        console.print(name)
    if not names:
        err_console.print("no voters; add one with 'llmops arena voters add NAME'")


@voters_app.command("rm")
def voters_rm(
    name: Annotated[str, typer.Argument(help="Voter name.")], root: RootOption = None
) -> None:
    """Void a voter's key; the votes already cast stay."""
    try:
        _voter_keys(root).remove(name)
    except VoterError as err:
        raise fail(str(err), Exit.INVALID) from err
    console.print(f"removed voter {name}; their key no longer signs in")


@arena_app.command("import")
def import_command(
    path: Annotated[Path, typer.Argument(help="FastChat battle log: JSON list or JSONL.")],
    arena: Annotated[str, typer.Option("--arena", help="Arena to add the battles to.")],
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add battles and votes from a FastChat log (each row once)."""
    top = resolve_root(root)
    battles = read_battles(path)
    added, known = import_battles(open_registry_or_fail(top), arena, battles)
    if as_json:
        console.print_json(json.dumps({"arena": arena, "added": added, "already": known}))
    else:
        console.print(f"{added} battle(s) added to arena '{arena}', {known} already there")


@arena_app.command("export")
def export_command(
    name: Annotated[str, typer.Argument(help="Arena name.")],
    out: Annotated[Path, typer.Option("--out", help="File to write (.json or .jsonl).")],
    kind: Annotated[
        str,
        typer.Option(
            "--format", help="fastchat (battle log) or dpo (prompt, chosen, rejected rows)."
        ),
    ] = "fastchat",
    root: RootOption = None,
) -> None:
    """Write the votes as a FastChat log or as DPO preference rows."""
    if kind not in ("fastchat", "dpo"):
        raise fail(f"--format must be fastchat or dpo, not '{kind}'", Exit.INVALID)
    top = resolve_root(root)
    battles = export_battles(ArenaStore(open_registry_or_fail(top)).battles(name))
    if not battles:
        raise fail(f"arena '{name}' has no counted votes to export")
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fastchat":
        write_battles(battles, out)
        console.print(f"{len(battles)} vote(s) written to {out}")
        return
    rows = preference_rows(battles)
    with out.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    console.print(
        f"{len(rows)} preference row(s) written to {out} "
        f"(ties, both-bad and battles without answers are left out)"
    )
