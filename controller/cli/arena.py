"""CLI `llmops arena run|leaderboard|vote|import|export`: thin commands over apply/arena."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

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

arena_app = typer.Typer(
    help="Pairwise battles between models: run, vote, leaderboards, FastChat logs.",
    no_args_is_help=True,
)
Voters = Annotated[str, typer.Option("--voters", help="Whose votes count: all, judge or human.")]


def print_board(board: Any, title: str) -> None:
    table = Table(title=title)
    for column in ("rank", "model", "rating", "95% interval", "battles", "win rate", "note"):
        table.add_column(column, justify="left" if column in ("model", "note") else "right")
    for s in board.standings:
        table.add_row(
            str(s.rank),
            s.model,
            f"{s.rating:.0f}",
            f"[{s.lower:.0f}, {s.upper:.0f}]",
            str(s.battles),
            f"{s.win_rate:.0%}",
            s.flag or "",
        )
    console.print(table)


def _runner(top: Path):  # type: ignore[no-untyped-def]
    from controller.apply.arena import ArenaRunner

    return ArenaRunner(load_or_exit(top), open_registry_or_fail(top), err_console)


@arena_app.command("run")
def run(
    name: Annotated[str, typer.Argument(help="Arena spec name.")],
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Answer, battle and judge what is not stored yet, then rate. Exit 1 when a gate fails."""
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
        print_board(result.boards["all"], f"arena {name}")
        for gate_name, gate in result.gates.items():
            mark = "[green]pass[/green]" if gate.passed else "[red]FAIL[/red]"
            console.print(f"gate {gate_name}: {mark} ({gate.detail})")
    if outputs.failed_gates:
        raise typer.Exit(Exit.FAILED)


@arena_app.command("leaderboard")
def leaderboard_command(
    name: Annotated[str, typer.Argument(help="Arena name (a spec, or one filled by import).")],
    voters: Voters = "all",
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ratings from every stored vote of the arena, with bootstrap intervals."""
    from controller.apply.arena import votes_of
    from controller.state.registry.arena import ArenaStore
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
    board = leaderboard(votes_of(battles, voters), **boot)
    if as_json:
        console.print_json(json.dumps(board.as_dict()))
        return
    print_board(board, f"arena {name} ({voters} votes, {board.battles} counted)")


def _bootstrap(top: Path, name: str) -> dict[str, Any]:
    """The spec's bootstrap settings when the arena has a spec, else the defaults."""
    from controller.workspace import load

    loaded = load(top)
    resource = loaded.desired.resources.get(f"Arena/{name}") if loaded.desired else None
    boot = (resource.spec.get("bootstrap") if resource else None) or {}
    return {
        "rounds": int(boot.get("rounds", 1000)),
        "confidence": float(boot.get("confidence", 0.95)),
        "seed": int(boot.get("seed", 0)),
    }


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
    """Vote blind in the terminal: two answers in random order, names shown after the vote."""
    from controller.apply.arena import blind_order
    from controller.state.registry.arena import ArenaStore

    top = resolve_root(root)
    store = ArenaStore(open_registry_or_fail(top))
    who = voter or default_voter()
    pending = [
        b
        for b in store.battles(name)
        if b.answer_a is not None
        and b.answer_b is not None
        and not any(v.voter_kind == "human" and v.voter_id == who for v in b.votes)
    ]
    if not pending:
        console.print(f"nothing to vote on in arena '{name}' for {who}")
        return
    choices = {"1": "first", "2": "second", "t": "tie", "b": "tie (bothbad)"}
    cast = 0
    for battle in pending[:count]:
        swapped = blind_order(battle.id, who)
        first, second = (
            (battle.answer_b, battle.answer_a) if swapped else (battle.answer_a, battle.answer_b)
        )
        console.rule(f"battle {battle.id}")
        console.print(f"[bold]Prompt[/bold]\n{battle.prompt}\n")
        console.print(f"[bold]Answer 1[/bold]\n{first}\n")
        console.print(f"[bold]Answer 2[/bold]\n{second}\n")
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
        picked = choices[answer]
        if picked == "first":
            winner = "model_b" if swapped else "model_a"
        elif picked == "second":
            winner = "model_a" if swapped else "model_b"
        else:
            winner = picked
        store.add_vote(
            battle.id,
            voter_kind="human",
            voter_id=who,
            winner=winner,
            position="b_first" if swapped else "a_first",
        )
        cast += 1
        shown = (battle.model_b, battle.model_a) if swapped else (battle.model_a, battle.model_b)
        console.print(f"Answer 1 was {shown[0]}, answer 2 was {shown[1]}.")
    console.print(f"{cast} vote(s) stored for {who}")


@arena_app.command("import")
def import_command(
    path: Annotated[Path, typer.Argument(help="FastChat battle log: JSON list or JSONL.")],
    arena: Annotated[str, typer.Option("--arena", help="Arena to add the battles to.")],
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add battles and their votes from a FastChat-format log (each row once)."""
    from controller.apply.arena import import_battles
    from runners.arena.fastchat import read_battles

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
    """Write the arena's votes as a FastChat battle log or as DPO preference data."""
    from controller.apply.arena import export_battles
    from controller.state.registry.arena import ArenaStore
    from runners.arena.fastchat import preference_rows, write_battles

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
