"""CLI `llmops inspect MODEL[@VERSION]`: a brain scan of a registered version (thin)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

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
    """Brain scan: what fine-tuning changed, alarms, activations.

    Per-layer weights, fine-tuning deltas against the base and activations on probes; exits 1
    on an error alarm."""
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


CLI_ALARMS = 5  # alarms printed; the rest are in scan.json


def print_scan(outcome: ScanOutcome) -> None:
    """What changed first, then at most CLI_ALARMS alarms (one per phenomenon), what the base
    has too, and the pictures with the cells outside their colour scales."""
    result = outcome.result
    title = f"brain scan of {outcome.ref}" + (
        f" against {outcome.against}" if outcome.against else ""
    )
    console.print(f"[bold]{title}[/bold] ({outcome.status}, {result.get('kind', 'full')})")
    if outcome.against:
        print_changes(result)
    alarms = result.get("alarms") or []
    if alarms:
        shown = alarms[:CLI_ALARMS]
        more = len(alarms) - len(shown)
        table = Table(
            title=f"{len(alarms)} alarm(s)" + (f", first {len(shown)}" if more else ""),
            title_justify="left",
        )
        for column in ("severity", "where", "reason", "what to do"):
            table.add_column(column)
        for alarm in shown:
            table.add_row(
                _severity(alarm.get("severity", "")),
                Text(_where(alarm)),
                Text(alarm.get("reason", "")),
                Text(alarm.get("hint", "")),
            )
        console.print(table)
        if more:
            console.print(f"{more} more alarm(s) in {outcome.folder / 'scan.json'}")
    else:
        console.print("no alarms")
    context = result.get("context") or []
    if context:
        console.print(f"in the base too (context, not alarms): {len(context)}")
        for item in context[:CLI_ALARMS]:
            console.print(f"  - {item.get('reason', '')}", markup=False, highlight=False)
    images = result.get("images") or {}
    maps = result.get("heatmaps") or {}
    for name, file in sorted(images.items()):
        console.print(f"{name}: {outcome.folder / file}")
        clipped = ((maps.get(name) or {}).get("limits") or {}).get("text")
        if clipped:
            console.print(f"  colour scale clipped: {clipped}", markup=False, highlight=False)
    console.print(f"details: {outcome.folder / 'scan.json'}")


def print_changes(result: dict[str, Any]) -> None:
    """What fine-tuning changed: modules and layers by relative weight change, and the MLP
    neurons whose activation moved most on the probes, with their tokens."""
    changes = result.get("changes") or {}
    modules = changes.get("modules") or []
    changed = result.get("modules_changed") or []
    console.print(f"[bold]what changed[/bold]: modules changed: {', '.join(changed) or 'none'}")
    if modules:
        table = Table(title="modules by relative weight change", title_justify="left")
        for column in ("module", "relative change", "layers"):
            table.add_column(column, justify="left" if column == "module" else "right")
        for row in modules[:8]:
            table.add_row(row["module"], _num(row.get("relative_change")), str(row["layers"]))
        console.print(table)
    layers = changes.get("layers") or result.get("layers_changed_most") or []
    if layers:
        console.print(
            "layers that changed most: "
            + ", ".join(f"{r['layer']} ({_num(r['relative_change'])})" for r in layers[:8])
        )
    neurons = changes.get("neurons") or []
    if neurons:
        table = Table(title="neurons whose activation changed most", title_justify="left")
        for column in ("layer", "neuron", "change", "tokens: base -> fine-tune"):
            table.add_column(column)
        for row in neurons[:5]:
            tokens = "; ".join(
                f"{t['token']!r} {_num(t['base'])} -> {_num(t['tuned'])}" for t in row["tokens"]
            )
            table.add_row(
                str(row["layer"]), str(row["neuron"]), f"{_num(row['score'])}x", Text(tokens)
            )
        console.print(table)
    elif changes.get("neurons_note"):
        console.print(changes["neurons_note"])


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"


def _severity(severity: str) -> str:
    style = {"error": "red", "warning": "yellow"}.get(severity, "dim")
    return f"[{style}]{severity}[/{style}]"


def _where(alarm: dict[str, Any]) -> str:
    layers = alarm.get("layers") or []
    if len(layers) > 1:
        span = "layers " + (
            ", ".join(map(str, layers))
            if len(layers) <= 6
            else f"{layers[0]} to {layers[-1]} ({len(layers)})"
        )
        return " ".join(p for p in (span, alarm.get("module") or "") if p)
    return alarm.get("tensor") or " ".join(
        str(alarm[k]) for k in ("layer", "module") if alarm.get(k) is not None
    )
