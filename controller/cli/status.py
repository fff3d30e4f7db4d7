"""CLI `llmops status` and `llmops drift`: each resource's state, and where reality differs."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from controller.cli.common import (
    Exit,
    JsonOption,
    RootOption,
    console,
    load_or_exit,
    open_registry_or_fail,
    resolve_root,
)
from controller.observe.drift import find_drift
from controller.observe.status import resource_status
from controller.state.lockfile import LOCK_FILE, read_lock
from controller.state.paths import StatePaths


def status_command(root: RootOption = None, as_json: JsonOption = False) -> None:
    """Each resource: applied, pending or never, and what it made.

    Pending: its spec changed since the last apply. Deployments show their live process.
    Exit 0, or 3 when pending.
    """
    top = resolve_root(root)
    loaded = load_or_exit(top)
    rows = resource_status(loaded.desired, read_lock(top / LOCK_FILE), StatePaths.for_repo(top))
    pending = any(r.state != "applied" for r in rows)
    if as_json:
        print(json.dumps({"pending": pending, "resources": [r.as_dict() for r in rows]}, indent=2))
    else:
        table = Table("resource", "state", "digest", "result")
        styles = {"applied": "green", "pending": "yellow", "not applied": "yellow"}
        for row in rows:
            style = styles.get(row.state, "red")
            table.add_row(
                row.address, f"[{style}]{row.state}[/{style}]", row.digest[7:19], row.summary
            )
        console.print(table)
    raise typer.Exit(Exit.CHANGES_PENDING if pending else Exit.OK)


def drift_command(root: RootOption = None, as_json: JsonOption = False) -> None:
    """Where registry, stores or servers differ from llmops.lock.

    Exit 0 when none, 3 when drift was found.
    """
    top = resolve_root(root)
    registry = open_registry_or_fail(top)
    drift = find_drift(read_lock(top / LOCK_FILE), registry)
    if as_json:
        print(json.dumps({"drift": [d.as_dict() for d in drift]}, indent=2))
    elif not drift:
        console.print("no drift: the registry, stores and deployments match llmops.lock")
    else:
        table = Table("resource", "expected", "actual", "fix")
        for item in drift:
            table.add_row(item.address, item.expected, f"[red]{item.actual}[/red]", item.fix)
        console.print(table)
    raise typer.Exit(Exit.CHANGES_PENDING if drift else Exit.OK)
