"""CLI entry point `llmops`: validate, plan, schemas; exit codes documented in docs/cli.md."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from controller import installed_version
from controller.cli.apply import apply_command
from controller.cli.arena import arena_app
from controller.cli.common import (
    Exit,
    JsonOption,
    RootOption,
    console,
    err_console,
    resolve_root,
)
from controller.cli.data import data_app
from controller.cli.doctor import doctor_command
from controller.cli.evaluate import bless_command, eval_app
from controller.cli.history import history_command
from controller.cli.images import images_app
from controller.cli.init import init_command
from controller.cli.inspect import inspect_command
from controller.cli.models import models_app
from controller.cli.pipeline import pipeline_app
from controller.cli.report import report_command
from controller.cli.serve import serve_command
from controller.cli.status import drift_command, status_command
from controller.cli.train import train_command
from controller.cli.ui import ui_command
from controller.cli.usage import usage_command
from controller.load.diagnostics import has_errors
from controller.report.terminal import print_diagnostics, print_plan
from controller.schemas import stale_schemas, write_schemas
from controller.workspace import load, make_plan
from runners.errors import LlmopsError

# `llmops --help` lists the commands as a user works, panel by panel, in this order; a
# command not named here comes last, in the plain "Commands" panel.
HELP_PANELS: dict[str, tuple[str, ...]] = {
    "Getting started": (
        *("init", "validate", "plan", "apply", "status", "drift", "report", "history"),
    ),
    "Models and data": ("models", "data", "train", "eval", "bless", "arena", "inspect"),
    "Serving": ("serve", "ui", "pipeline", "images", "usage"),
    "This machine and tools": ("doctor", "schemas", "version"),
}
HELP_ORDER = [name for names in HELP_PANELS.values() for name in names]


class LlmopsGroup(TyperGroup):
    """Catches llmops' one error base for every command: one line, the error's exit code.
    Lists the commands by HELP_PANELS."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        for panel, names in HELP_PANELS.items():
            for name in names:
                command = self.commands.get(name)
                # Unset is None on a group, typer's DefaultPlaceholder on a command.
                if command is not None and not isinstance(
                    getattr(command, "rich_help_panel", None), str
                ):
                    command.rich_help_panel = panel  # type: ignore[attr-defined]
        rank = {name: i for i, name in enumerate(HELP_ORDER)}
        return sorted(super().list_commands(ctx), key=lambda name: rank.get(name, len(rank)))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LlmopsError as err:
            err_console.print(f"error: {err}", style="red", soft_wrap=True)
            raise typer.Exit(err.exit_code) from err


app = typer.Typer(
    cls=LlmopsGroup,
    name="llmops",
    help="Run open-source LLMs the GitOps way: specs in git, plan, apply, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(pipeline_app, name="pipeline")
app.command("train")(train_command)
app.add_typer(eval_app, name="eval")
app.add_typer(arena_app, name="arena")
app.add_typer(images_app, name="images")
app.command("bless")(bless_command)
app.command("apply")(apply_command)
app.command("history")(history_command)
app.command("inspect")(inspect_command)
app.command("report")(report_command)
app.command("status")(status_command)
app.command("drift")(drift_command)
app.command("serve")(serve_command)
app.command("ui")(ui_command)
app.command("usage")(usage_command)
app.command("doctor")(doctor_command)
app.command("init")(init_command)
OverrideOption = Annotated[
    list[str] | None,
    typer.Option(
        "-o",
        "--override",
        help="Experiment override 'key=value' (all experiments) or "
        "'name:key=value' (one); hydra syntax.",
    ),
]


@app.command()
def validate(
    paths: Annotated[list[Path] | None, typer.Argument(help="Spec files or folders.")] = None,
    root: RootOption = None,
    as_json: JsonOption = False,
    override: OverrideOption = None,
) -> None:
    """Load, validate and resolve specs. Exit 0 when valid, 2 when not."""
    top = resolve_root(root)
    if paths:
        missing = [p for p in paths if not p.exists()]
        if missing:
            err_console.print(f"error: no such file or folder: {missing[0]}", style="red")
            raise typer.Exit(Exit.INVALID)
    loaded = load(top, [p.resolve() for p in paths] if paths else None, override)
    invalid = has_errors(loaded.diagnostics) or loaded.desired is None
    if as_json:
        print(
            json.dumps(
                {
                    "valid": not invalid,
                    "specs": len(loaded.specs),
                    "resources": sorted(loaded.desired.resources) if loaded.desired else [],
                    "diagnostics": [d.as_dict() for d in loaded.diagnostics],
                },
                indent=2,
            )
        )
    else:
        print_diagnostics(err_console, loaded.diagnostics)
        if not invalid and loaded.desired is not None:
            counts: dict[str, int] = {}
            for spec in loaded.specs:
                counts[spec.kind] = counts.get(spec.kind, 0) + 1
            listed = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            runs = sum(len(r) for r in loaded.runs.values())
            console.print(
                f"[green]valid[/green]: {len(loaded.specs)} specs ({listed}); "
                f"{runs} experiment run(s); {len(loaded.desired.resources)} resources"
            )
    raise typer.Exit(Exit.INVALID if invalid else Exit.OK)


@app.command()
def plan(
    root: RootOption = None,
    as_json: JsonOption = False,
    override: OverrideOption = None,
    lock: Annotated[Path | None, typer.Option(help="Lock file to compare with.")] = None,
    all_actions: Annotated[bool, typer.Option("--all", help="Also list unchanged ones.")] = False,
) -> None:
    """Compare specs with the lock file: what apply would do.

    Exit 0: nothing to do; 2: invalid; 3: changes pending.
    """
    top = resolve_root(root)
    loaded, the_plan = make_plan(top, override, lock)
    if the_plan is None:
        if as_json:
            print(
                json.dumps(
                    {"valid": False, "diagnostics": [d.as_dict() for d in loaded.diagnostics]},
                    indent=2,
                )
            )
        else:
            print_diagnostics(err_console, loaded.diagnostics)
        raise typer.Exit(Exit.INVALID)
    if as_json:
        print(
            json.dumps(
                {
                    "valid": True,
                    **the_plan.as_dict(),
                    "diagnostics": [d.as_dict() for d in loaded.diagnostics],
                },
                indent=2,
            )
        )
    else:
        print_diagnostics(err_console, loaded.diagnostics)
        print_plan(console, the_plan, show_noop=all_actions)
    raise typer.Exit(Exit.CHANGES_PENDING if the_plan.has_changes else Exit.OK)


@app.command()
def schemas(
    root: RootOption = None,
    check: Annotated[bool, typer.Option(help="Only check; exit 1 when stale.")] = False,
) -> None:
    """Write the JSON Schema of every kind into schemas/."""
    top = resolve_root(root)
    if check:
        stale = stale_schemas(top)
        if stale:
            err_console.print(
                f"stale schemas: {', '.join(stale)}; run 'llmops schemas'", style="red"
            )
            raise typer.Exit(Exit.FAILED)
        console.print("schemas are up to date")
        return
    written = write_schemas(top)
    console.print(
        f"wrote {len(written)} schema file(s) to schemas/" if written else "schemas are up to date"
    )


@app.command()
def version() -> None:
    """Print the llmops version."""
    console.print(installed_version())


def _print_version(value: bool) -> None:
    if value:
        console.print(installed_version())
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the installed llmops version and exit.",
        ),
    ] = False,
) -> None:
    pass


def main() -> None:
    """Console entry point: no traceback reaches the user unless LLMOPS_DEBUG is set."""
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted", style="red")
        sys.exit(130)
    except Exception as err:
        if os.environ.get("LLMOPS_DEBUG"):
            raise
        err_console.print(
            f"internal error: {type(err).__name__}: {err}\n"
            "This is a bug in llmops; rerun with LLMOPS_DEBUG=1 for the traceback and report it.",
            style="red",
        )
        sys.exit(Exit.FAILED)


if __name__ == "__main__":
    main()
