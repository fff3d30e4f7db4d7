"""`llmops --help` as a user reads it in an 80-column terminal: commands grouped in panels in
the order one works (controller/cli/main.py HELP_PANELS), and every command's summary one
whole sentence on its own line, in every group's help too."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from controller.cli.main import HELP_PANELS, app
from tests.conftest import PROJECT_ROOT

PANEL = re.compile(r"^╭─ (.+?) ─+╮$")
ROW = re.compile(r"^ (\S+) +(\S.*?) *$")


def help_text(*group: str) -> str:
    """`llmops [group] --help` in an 80-column terminal: the top level in its own process, as a
    user runs it; the groups in process (the same typer rendering, 20 s faster)."""
    if group:
        result = CliRunner().invoke(
            app, [*group, "--help"], env={"COLUMNS": "80"}, terminal_width=80
        )
        assert result.exit_code == 0, result.output
        return result.output
    done = subprocess.run(
        [sys.executable, "-m", "controller.cli.main", "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def panels(text: str) -> list[tuple[str, list[str]]]:
    """(title, the lines inside the box) of each panel, in order."""
    found: list[tuple[str, list[str]]] = []
    inside: list[str] | None = None
    for line in text.splitlines():
        line = line.rstrip()
        title = PANEL.match(line)
        if title:
            inside = []
            found.append((title[1], inside))
        elif line.startswith("╰"):
            inside = None
        elif inside is not None and line.startswith("│"):
            assert len(line) == 80, f"the help is {len(line)} columns wide, not 80: {line}"
            inside.append(line[1:-1])
    return found


def commands(text: str) -> dict[str, list[tuple[str, str]]]:
    """Each command panel's (name, summary) rows; fails on a summary that wraps or is cut."""
    listed = {}
    for title, lines in panels(text):
        if title == "Options":
            continue
        rows: list[tuple[str, str]] = []
        for line in lines:
            row = ROW.match(line)
            after = f" after {rows[-1][0]}'s" if rows else ""
            assert row, f"a summary wraps onto a second line in {title}{after}: {line.strip()!r}"
            rows.append((row[1], row[2]))
        for name, summary in rows:
            assert summary.endswith("."), f"{name}'s summary is cut mid-sentence: {summary!r}"
        listed[title] = rows
    return listed


def groups() -> list[tuple[str, ...]]:
    """Every command group of `llmops`, as the words that reach it."""
    found = []

    def walk(group: TyperGroup, path: tuple[str, ...]) -> None:
        found.append(path)
        for name, command in group.commands.items():
            if isinstance(command, TyperGroup):
                walk(command, (*path, name))

    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    walk(root, ())
    return found


def test_llmops_help_groups_commands_as_a_user_works() -> None:
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    registered = set(root.commands)
    listed = commands(help_text())
    assert list(listed) == [
        "Getting started",
        "Models and data",
        "Serving",
        "This machine and tools",
    ]
    for title, names in HELP_PANELS.items():
        assert [name for name, _ in listed[title]] == [n for n in names if n in registered]
    assert [name for name, _ in listed["Getting started"]][-7:] == [
        *("validate", "plan", "apply", "status", "drift", "report", "history"),
    ]
    # Every command is in a panel, once: none falls into an unnamed "Commands" panel.
    shown = [name for rows in listed.values() for name, _ in rows]
    assert sorted(shown) == sorted(registered)


def test_every_summary_is_one_whole_line_in_every_group() -> None:
    all_groups = groups()
    assert ("models",) in all_groups and ("eval",) in all_groups
    for group in all_groups[1:]:
        listed = commands(help_text(*group))
        assert listed, f"llmops {' '.join(group)} --help lists no commands"


def test_the_check_sees_a_wrapped_summary() -> None:
    # The parser on help whose summary wraps (as `llmops --help` did): the tests above can fail.
    first = " history   Each change to a resource's spec and lock entry, from git alone: commit,"
    second = "           digests, metrics, and the model version a deployment served."
    wrapped = "\n".join(
        [
            "╭─ Commands " + "─" * 67 + "╮",
            "│" + first[:78].ljust(78) + "│",
            "│" + second[:78].ljust(78) + "│",
            "╰" + "─" * 78 + "╯",
        ]
    )
    try:
        commands(wrapped)
    except AssertionError as err:
        assert "wraps onto a second line" in str(err)
    else:
        raise AssertionError("a wrapped summary passed the check")
