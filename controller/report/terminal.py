"""Reports, terminal: diagnostics and plans rendered with rich for people."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from controller.load.diagnostics import Diagnostic
from controller.plan.digest import short
from controller.plan.types import ActionKind, Plan

ACTION_STYLE: dict[ActionKind, str] = {
    ActionKind.CREATE: "green",
    ActionKind.UPDATE: "yellow",
    ActionKind.RETRAIN: "magenta",
    ActionKind.REEVALUATE: "cyan",
    ActionKind.DEPLOY: "blue",
    ActionKind.DELETE: "red",
    ActionKind.NOOP: "dim",
}


def gate_line(name: str, passed: bool, detail: str) -> str:
    """One gate's verdict for a terminal: `gate NAME: pass|FAIL (detail)`, as rich markup.

    Names and details come from specs and results, so they are escaped, never read as markup."""
    mark = "[green]pass[/green]" if passed else "[red]FAIL[/red]"
    return f"gate {escape(name)}: {mark} ({escape(detail)})"


def print_diagnostics(console: Console, diagnostics: list[Diagnostic]) -> None:
    for diag in diagnostics:
        style = "red" if diag.severity == "error" else "yellow"
        head = Text(f"{diag.file}:{diag.line}:{diag.col}", style="bold")
        head.append(f": {diag.severity}:", style=style)
        if diag.path:
            head.append(f" {diag.path}:", style="bold")
        head.append(f" {diag.message}")
        console.print(head, soft_wrap=True)
        if diag.hint:
            console.print(Text(f"    hint: {diag.hint}", style="cyan"), soft_wrap=True)
    errors = sum(d.severity == "error" for d in diagnostics)
    warnings = len(diagnostics) - errors
    if diagnostics:
        console.print(f"{errors} error(s), {warnings} warning(s)", style="bold")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"~{seconds:.0f}s"
    if seconds < 5400:
        return f"~{seconds / 60:.0f}min"
    return f"~{seconds / 3600:.1f}h"


def print_plan(console: Console, plan: Plan, show_noop: bool = False) -> None:
    table = Table(title="llmops plan", show_lines=False, expand=False)
    table.add_column("wave", justify="right")
    table.add_column("action")
    table.add_column("runner")
    table.add_column("resource", no_wrap=True)
    table.add_column("digest")
    table.add_column("estimate", justify="right")
    table.add_column("reason", overflow="fold")
    shown = plan.actions if show_noop else plan.pending
    for action in shown:
        digest = (
            f"{short(action.before)} -> {short(action.after)}"
            if action.before and action.after and action.before != action.after
            else short(action.after or action.before)
        )
        estimate = ""
        if action.estimate:
            estimate = (
                f"{action.estimate.amount:,} {action.estimate.unit}, "
                f"{_duration(action.estimate.seconds)}"
            )
        table.add_row(
            str(action.wave),
            Text(action.kind.value, style=ACTION_STYLE[action.kind]),
            action.runner,
            str(action.address),
            digest,
            estimate,
            action.reason,
        )
    if shown:
        console.print(table)
    counts = plan.counts()
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    if plan.has_changes:
        console.print(f"Plan: {summary}.", style="bold")
    else:
        console.print(
            f"Nothing to do: {len(plan.actions)} resources match the lock file.", style="bold green"
        )
