"""CLI `llmops inspect MODEL[@VERSION]`: a brain scan of a registered version (thin)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from controller.apply.inspect import Inspector, ScanOutcome, base_of, read_probes
from controller.cli.common import (
    Exit,
    JsonOption,
    RootOption,
    console,
    err_console,
    fail,
    open_registry_or_fail,
    resolve_root,
)


def inspect_command(
    model: Annotated[str, typer.Argument(help="name, name@version or name@alias")],
    against: Annotated[
        str | None,
        typer.Option(
            "--against", help="Base version to diff with; a fine-tune's own base by default."
        ),
    ] = None,
    probes: Annotated[
        Path | None,
        typer.Option("--probes", help="Prompts for activations: text (one per line) or JSONL."),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=100)] = 5,
    spread_k: Annotated[float, typer.Option("--spread-k", min=0.1)] = 6.0,
    weightwatcher: Annotated[
        bool, typer.Option("--weightwatcher", help="Power-law alpha per layer (optional extra).")
    ] = False,
    force: Annotated[bool, typer.Option(help="Scan again even when stored.")] = False,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Per-layer weights, fine-tuning deltas and activations; exit 1 on an error alarm."""
    registry = open_registry_or_fail(resolve_root(root))
    version = registry.find(model)
    if version is None:
        raise fail(f"model '{model}' is not in the registry; see llmops models list", Exit.INVALID)
    base = registry.find(against) if against else base_of(registry, version)
    if against and base is None:
        raise fail(f"--against '{against}' is not in the registry", Exit.INVALID)
    prompts = read_probes(probes) if probes else None
    options = {"top_k": top_k, "spread_k": spread_k, "weightwatcher": weightwatcher}
    outcome = Inspector(registry, err_console).scan(version, base, prompts, options, force=force)
    if as_json:
        console.print_json(json.dumps({**outcome.result, "folder": str(outcome.folder)}))
    else:
        print_scan(outcome)
    if outcome.errors:
        raise typer.Exit(Exit.FAILED)


def print_scan(outcome: ScanOutcome) -> None:
    result = outcome.result
    title = f"brain scan of {outcome.ref}" + (
        f" against {outcome.against}" if outcome.against else ""
    )
    console.print(f"[bold]{title}[/bold] ({outcome.status}, {result.get('kind', 'full')})")
    if outcome.against:
        changed = result.get("modules_changed") or []
        console.print(f"modules changed: {', '.join(changed) or 'none'}")
        table = Table(title="layers that changed most")
        table.add_column("layer", justify="right")
        table.add_column("relative change", justify="right")
        for row in (result.get("layers_changed_most") or [])[:8]:
            table.add_row(str(row["layer"]), f"{row['relative_change']:.3g}")
        console.print(table)
    alarms = result.get("alarms") or []
    if alarms:
        table = Table(title=f"{len(alarms)} alarm(s)")
        for column in ("severity", "where", "reason", "what to do"):
            table.add_column(column)
        for alarm in alarms:
            where = alarm.get("tensor") or " ".join(
                str(alarm[k]) for k in ("layer", "module") if alarm.get(k) is not None
            )
            style = "red" if alarm.get("severity") == "error" else "yellow"
            table.add_row(
                f"[{style}]{alarm.get('severity')}[/{style}]",
                where,
                alarm.get("reason", ""),
                alarm.get("hint", ""),
            )
        console.print(table)
    else:
        console.print("no alarms")
    images = result.get("images") or {}
    for name, file in sorted(images.items()):
        console.print(f"{name}: {outcome.folder / file}")
    console.print(f"details: {outcome.folder / 'scan.json'}")
