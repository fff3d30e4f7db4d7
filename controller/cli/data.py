"""CLI `llmops data`: prepare, show, diff."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from controller.api import split_ref
from controller.api.dataset import DatasetSpec
from controller.apply.prepare import Preparer, read_split, version_dir
from controller.cli.common import (
    JsonOption,
    RootOption,
    console,
    err_console,
    fail,
    load_or_exit,
    open_registry_or_fail,
    resolve_root,
    unknown,
)
from runners.data.diff import diff_rows
from runners.data.splits import SPLITS

data_app = typer.Typer(help="Prepare, inspect and compare dataset versions.", no_args_is_help=True)


def _details(step: dict[str, Any]) -> str:
    skip = {"step", "rows_in", "rows_out", "removed", "added", "examples"}
    parts = []
    for key, value in step.items():
        if key in skip or value in ({}, None):
            continue
        if isinstance(value, dict):
            inner = ", ".join(f"{k} {v}" for k, v in value.items())
            parts.append(f"{key}: {inner}")
        else:
            parts.append(f"{key} {value}")
    return "; ".join(parts)


def print_steps(stats: dict[str, Any]) -> None:
    table = Table(title=f"{stats['dataset']}: preparation")
    for column in ("step", "rows in", "rows out", "details"):
        table.add_column(column, justify="right" if column.startswith("rows") else "left")
    for step in stats["steps"]:
        table.add_row(step["step"], str(step["rows_in"]), str(step["rows_out"]), _details(step))
    console.print(table)
    rows = ", ".join(f"{k} {v}" for k, v in stats["rows"].items())
    lengths = stats["lengths"].get("train", {})
    console.print(
        f"splits: {rows}; {stats['length_unit']} per train row: "
        f"mean {lengths.get('mean', '-')}, p95 {lengths.get('p95', '-')}, "
        f"max {lengths.get('max', '-')}"
    )


@data_app.command("prepare")
def prepare_cmd(
    dataset: Annotated[str, typer.Argument(help="Dataset spec name.")],
    root: RootOption = None,
    force: Annotated[bool, typer.Option(help="Prepare again even when cached.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Run the steps, write a version, track it with DVC (cached).

    A dataset whose inputs did not change is not prepared again."""
    top = resolve_root(root)
    loaded = load_or_exit(top)
    names = sorted(r.name for r, _ in loaded.desired.specs(DatasetSpec))
    if dataset not in names:
        raise unknown("Dataset", dataset, names)
    preparer = Preparer(loaded, open_registry_or_fail(top), err_console)
    outcome = preparer.prepare(dataset, force=force)
    version = outcome.version
    if as_json:
        print(
            json.dumps(
                {
                    "dataset": dataset,
                    "status": outcome.status,
                    "version": version.version,
                    "rows": version.rows,
                    "stats": outcome.stats,
                },
                indent=2,
            )
        )
        return
    if outcome.status == "cached":
        console.print(
            f"{dataset}: inputs unchanged; version {version.version[:19]} is "
            "prepared already (nothing to do)"
        )
        return
    print_steps(outcome.stats)
    store = outcome.folder
    shown = store.relative_to(top) if store.is_relative_to(top) else store
    console.print(
        f"{dataset}: version [bold]{version.version[:19]}[/bold] written to "
        f"data/prepared/{dataset}/ (DVC md5 {version.dvc_md5}); statistics and "
        f"histogram in {shown}"
    )


@data_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="dataset or dataset@<version prefix>")],
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Statistics of a prepared version (the newest by default)."""
    top = resolve_root(root)
    registry = open_registry_or_fail(top)
    version = registry.datasets.find(ref)
    if version is None:
        raise fail(f"no prepared version '{ref}'; run 'llmops data prepare {split_ref(ref)[0]}'")
    if as_json:
        print(json.dumps(version.stats, indent=2))
        return
    history = registry.datasets.history(split_ref(ref)[0])
    console.print(
        f"{split_ref(ref)[0]}@{version.version[7:19]} ({len(history)} version(s) prepared)"
    )
    print_steps(version.stats)
    stats = version.stats
    console.print(
        f"removed: {stats['duplicates_removed']} duplicate(s), "
        f"{stats['near_duplicates_removed']} near-duplicate(s), "
        f"{stats['eval_overlap']} overlapping eval data, {stats['bad_rows']} bad row(s);"
        f" redactions: {stats['redactions'] or 'none'}"
    )


@data_app.command("diff")
def diff(
    before: Annotated[str, typer.Argument(help="dataset@version (older)")],
    after: Annotated[str, typer.Argument(help="dataset@version (newer), or a dataset name")],
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Rows added, removed and changed per split, with statistics."""
    registry = open_registry_or_fail(resolve_root(root))
    versions = []
    for ref in (before, after):
        found = registry.datasets.find(ref)
        if found is None:
            raise fail(f"no prepared version '{ref}'; see 'llmops data show'")
        folder = version_dir(registry, found.dataset.name, found.version)
        if not folder.is_dir():
            raise fail(
                f"{ref} is not in the local store; check out its .dvc file and run "
                "'dvc pull', then 'llmops data prepare'"
            )
        versions.append((found, folder))
    (a, a_dir), (b, b_dir) = versions
    fmt = b.stats.get("format", "instruction")
    splits = {
        name: diff_rows(read_split(a_dir, name), read_split(b_dir, name), fmt) for name in SPLITS
    }
    keys = (
        "rows_total",
        "duplicates_removed",
        "near_duplicates_removed",
        "eval_overlap",
        "bad_rows",
    )
    result = {
        "before": a.version,
        "after": b.version,
        "splits": splits,
        "stats": {k: {"before": a.stats.get(k), "after": b.stats.get(k)} for k in keys},
        "rows": {"before": a.rows, "after": b.rows},
    }
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"{a.version[7:19]} -> {b.version[7:19]}")
    for column in ("split", "added", "removed", "changed", "unchanged"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for name, d in splits.items():
        table.add_row(
            name, str(d["added"]), str(d["removed"]), str(d["changed"]), str(d["unchanged"])
        )
    console.print(table)
    for key, values in result["stats"].items():
        console.print(f"{key}: {values['before']} -> {values['after']}")
