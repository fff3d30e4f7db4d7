"""CLI `llmops doctor`: check this machine (controller/observe/doctor.py) before a first apply."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from controller.cli.common import JsonOption, RootOption, console, resolve_root
from controller.observe.doctor import diagnose, exit_code

STYLES = {"ok": "green", "warning": "yellow", "missing": "red"}


def doctor_command(root: RootOption = None, as_json: JsonOption = False) -> None:
    """Check this machine: packages, device, state, registry, engines.

    Exit 1 when a required one is missing: Python 3.11+, torch, a writable state folder and a
    registry that opens. The rest (container engine, Kubernetes, llama.cpp, chromium) only
    warns when absent.
    """
    checks = diagnose(resolve_root(root))
    if as_json:
        print(json.dumps([c.as_dict() for c in checks], indent=2))
    else:
        table = Table("check", "status", "detail", "fix")
        for check in checks:
            style = STYLES[check.status]
            table.add_row(
                check.check, f"[{style}]{check.status}[/{style}]", check.detail, check.fix
            )
        console.print(table)
    raise typer.Exit(exit_code(checks))
