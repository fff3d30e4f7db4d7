"""CLI `llmops status` and `llmops drift`: each resource's state, and where reality differs."""

from __future__ import annotations

import json
from typing import Any

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


def _summary(kind: str, outputs: dict[str, Any]) -> str:
    """One line of what a resource produced, from its recorded outputs (as JSON)."""
    if kind == "Evaluation":
        gates = outputs.get("gates") or {}
        failed = sum(1 for v in gates.values() if not v.get("passed"))
        head = f"{outputs.get('subject', '')} on {outputs.get('suite', '')}"
        return head + (f"; gates {len(gates) - failed}/{len(gates)} pass" if gates else "")
    if kind == "Dataset":
        rows = outputs.get("rows") or {}
        return f"{str(outputs.get('version', ''))[7:19]} " + " ".join(
            f"{k} {v}" for k, v in rows.items()
        )
    if kind == "Deployment":
        return f"{outputs.get('version', '')} ({outputs.get('target', '')})"
    if kind == "Experiment":
        loss = (outputs.get("metrics") or {}).get("final_eval_loss")
        return f"{outputs.get('version', '')}" + (f"; eval loss {loss:.4g}" if loss else "")
    return str(outputs.get("version", ""))


def status_command(root: RootOption = None, as_json: JsonOption = False) -> None:
    """Each resource: applied, pending (specs changed since the last apply) or never applied,
    with what it produced; deployments with their live process. Exit 0, or 3 when pending."""
    from controller.observe.drift import live_deployment
    from controller.state.lockfile import LOCK_FILE, read_lock
    from controller.state.paths import StatePaths

    top = resolve_root(root)
    loaded = load_or_exit(top)
    lock = read_lock(top / LOCK_FILE).resources
    state_root = StatePaths.for_repo(top).root
    rows = []
    for address in sorted(loaded.desired.resources, key=lambda a: (loaded.desired.waves[a], a)):
        resource = loaded.desired.resources[address]
        entry = lock.get(address)
        if entry is None:
            state = "not applied"
        elif entry.digest == resource.digest:
            state = "applied"
        else:
            state = "pending"
        outputs = entry.outputs.model_dump(mode="json", exclude_defaults=True) if entry else {}
        row: dict[str, Any] = {
            "address": address,
            "state": state,
            "digest": resource.digest,
            "summary": _summary(resource.kind, outputs),
            "outputs": outputs,
        }
        if resource.kind == "Deployment" and resource.spec.get("target") == "local":
            live = live_deployment(state_root, resource.name)
            row["live"] = {
                "running": live.running,
                "ready": live.ready,
                "version": live.version,
                "endpoint": live.endpoint,
                "pid": live.pid,
            }
            row["summary"] += (
                f"; live: {live.version} at {live.endpoint}, "
                + ("ready" if live.ready else "not ready")
                if live.running
                else "; live: not running"
            )
        rows.append(row)
    for address in sorted(set(lock) - set(loaded.desired.resources)):
        rows.append(
            {
                "address": address,
                "state": "orphaned",
                "digest": lock[address].digest,
                "summary": "in llmops.lock, no longer in the specs",
                "outputs": {},
            }
        )
    pending = any(r["state"] != "applied" for r in rows)
    if as_json:
        print(json.dumps({"pending": pending, "resources": rows}, indent=2))
    else:
        table = Table("resource", "state", "digest", "result")
        styles = {"applied": "green", "pending": "yellow", "not applied": "yellow"}
        for row in rows:
            style = styles.get(row["state"], "red")
            table.add_row(
                row["address"],
                f"[{style}]{row['state']}[/{style}]",
                row["digest"][7:19],
                row["summary"],
            )
        console.print(table)
    raise typer.Exit(Exit.CHANGES_PENDING if pending else Exit.OK)


def drift_command(root: RootOption = None, as_json: JsonOption = False) -> None:
    """Where the registry, the stores or the serving processes differ from llmops.lock.
    Exit 0 when none, 3 when drift was found."""
    from controller.observe.drift import find_drift
    from controller.state.lockfile import LOCK_FILE, read_lock

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
