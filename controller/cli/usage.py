"""CLI `llmops usage`: each client's requests and tokens on a deployment, from its usage rows."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from controller.api.deployment import DeploymentSpec
from controller.cli.common import (
    Exit,
    JsonOption,
    RootOption,
    console,
    fail,
    load_or_exit,
    resolve_root,
    unknown,
)
from controller.observe.usage import deployment_usage, parse_since
from controller.state.paths import StatePaths


def usage_command(
    deployment: Annotated[str, typer.Argument(help="The Deployment's name.")],
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Only usage after this: a span (30m, 24h, 7d) or an ISO date/time."
        ),
    ] = None,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Requests and tokens per client of a deployment.

    The local target's runtime records them in the state folder; other targets export them
    in /metrics. Exit 0, or 2 for an unknown deployment or a bad --since.
    """
    top = resolve_root(root)
    try:
        start = parse_since(since) if since is not None else None
    except ValueError as err:
        raise fail(f"--since: {err}", Exit.INVALID) from None
    report = deployment_usage(StatePaths.for_repo(top), deployment, start)
    if not report.recorded:
        # Nothing recorded: an unknown name is an error, a known one has no usage yet.
        known = sorted(r.name for r, _ in load_or_exit(top).desired.specs(DeploymentSpec))
        if deployment not in known:
            raise unknown("Deployment", deployment, known)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
        raise typer.Exit(Exit.OK)
    if not report.clients:
        console.print(f"no usage recorded for {deployment}" + (f" since {since}" if since else ""))
        raise typer.Exit(Exit.OK)
    table = Table("client", "requests", "prompt tokens", "completion tokens", "total tokens")
    for name, one in [*report.clients.items(), ("(all)", report.total())]:
        row = one.as_dict()
        table.add_row(
            name,
            *(f"{row[k]:,}" for k in ("requests", "prompt_tokens", "completion_tokens")),
            f"{row['total_tokens']:,}",
        )
    console.print(table)
    raise typer.Exit(Exit.OK)
