"""CLI `llmops history`: a resource's changes from git, and what a deployment served when."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from controller.cli.common import (
    Exit,
    JsonOption,
    RootOption,
    console,
    err_console,
    fail,
    resolve_root,
)
from controller.history.changes import EntryDiff, Evidence, FieldChange, HistoryError, Served
from controller.history.git_reader import (
    CommitInfo,
    GitHistory,
    ResourceChange,
    Snapshot,
    history,
    snapshot,
)
from controller.plan.address import Address
from controller.plan.digest import canonical_json, short
from controller.plan.kinds import DEPLOYMENT
from controller.plan.planner import flatten
from controller.state.paths import StatePaths
from controller.state.provenance import Provenance
from controller.state.registry.store import Registry
from runners.errors import LlmopsError

# Evaluation outputs carry per-metric comparisons; the terminal shows the first few changes.
OUTPUT_LINES = 8


def history_command(
    resource: Annotated[
        str,
        typer.Argument(
            help="Address such as Deployment/support-assistant (kind in any case), "
            "or a name that only one resource has."
        ),
    ],
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help="Commit-ish (sha, branch, tag, HEAD~3): the resource as of that commit, "
            "with the model a deployment served and its metrics.",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Show only the newest N changes.")
    ] = None,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Each change to a resource, from git: commit, author, PR.

    Each change to its spec and lock entry, with metrics and the model version a deployment
    served.
    """
    try:
        from git import GitCommandError
    except ImportError as err:  # GitPython raises this when no git executable is found
        raise fail(f"git cannot be run: {err}; install git", Exit.INVALID) from err

    top = resolve_root(root)
    _PROVENANCE.clear()
    _PROVENANCE[""] = top
    try:
        if at is not None:
            found, git = snapshot(top, resource, at)
            _warn(git)
            if as_json:
                payload = {**asdict(found), "warnings": git.warnings}
                print(json.dumps(payload, indent=2, default=str))
            else:
                _print_snapshot(found)
            return
        target, changes, git = history(top, resource, limit=limit)
    except HistoryError as err:
        raise fail(str(err), Exit.INVALID) from err
    except GitCommandError as err:
        raise fail(f"git failed: {str(err.stderr).strip() or err}") from err
    _warn(git)
    spec_file = next((c.spec_file for c in changes if c.spec_file), None)
    if as_json:
        payload = {
            "resource": target.address,
            "spec_file": spec_file,
            "shallow": git.shallow,
            "warnings": git.warnings,
            "changes": [asdict(c) for c in changes],
        }
        print(json.dumps(payload, indent=2, default=str))
        return
    where = f" ({spec_file})" if spec_file else ""
    console.print(
        Text.assemble((target.address, "bold"), f"{where}: {len(changes)} change(s), newest first")
    )
    for change in changes:
        console.print()
        _print_change(change)


def _warn(git: GitHistory) -> None:
    if git.shallow:
        err_console.print(
            "warning: shallow clone; older history is missing ('git fetch --unshallow')",
            style="yellow",
        )
    for warning in git.warnings:
        err_console.print(f"warning: {warning}", style="yellow")


_PROVENANCE: dict[str, Any] = {}  # "" -> the repository; ref -> its provenance line


def _provenance(ref: str) -> str:
    """'provenance: main @ 1a2b3c..., trusted, code ...' of a registered version, from the
    registry when there is one (history itself reads git only)."""
    if ref in _PROVENANCE:
        return _PROVENANCE[ref]
    text = ""
    paths = StatePaths.for_repo(_PROVENANCE.get("") or Path.cwd())
    if "@" in ref and paths.has_registry:
        try:
            version = Registry.open(paths).find(ref)
        except LlmopsError:
            version = None
        if version is not None:
            recorded = Provenance.from_dict((version.extra or {}).get("provenance"))
            text = (
                f"provenance: {recorded.describe()}"
                if recorded
                else "provenance: not recorded (stored before provenance, or by models pull)"
            )
    _PROVENANCE[ref] = text
    return text


def _line(text: str, indent: int = 2) -> None:
    console.print(" " * indent + text, markup=False, highlight=False, soft_wrap=True)


def _commit_header(info: CommitInfo) -> Text:
    pr = f"PR #{info.pr}" if info.pr is not None else "no PR"
    if info.merged_in:
        pr += f" (merged in {info.merged_in[:7]})"
    return Text.assemble(
        (info.short, "yellow"),
        f"  {info.date[:10]}  {info.author}  ",
        (pr, "cyan"),
        "  ",
        info.subject,
    )


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else canonical_json(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field(change: FieldChange) -> str:
    if change.change == "created":
        return f"{change.field}: {_show(change.after)} (added)"
    if change.change == "deleted":
        return f"{change.field}: removed (was {_show(change.before)})"
    return f"{change.field}: {_show(change.before)} -> {_show(change.after)}"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else _show(value)


def _evidence(item: Evidence) -> str:
    suite = f" ({item.suite})" if item.suite else ""
    text = ", ".join(f"{k} {_number(v)}" for k, v in sorted(item.metrics.items()))
    if item.gates:
        gates = ", ".join(f"{k} {v}" for k, v in sorted(item.gates.items()))
        text = f"{text}; gates {gates}" if text else f"gates {gates}"
    return f"{item.address}{suite}: {text}"


def _entry(diff: EntryDiff) -> list[str]:
    if diff.change == "created":
        return [f"{diff.address}: recorded, digest {short(diff.digest_after)}"]
    if diff.change == "deleted":
        return [f"{diff.address}: removed from the lock (was {short(diff.digest_before)})"]
    lines = [f"{diff.address}: digest {short(diff.digest_before)} -> {short(diff.digest_after)}"]
    if diff.digest_before == diff.digest_after:
        lines = [f"{diff.address}: same digest"]
    if diff.code_version:
        lines.append(f"  runner {diff.code_version[0]} -> {diff.code_version[1]}")
    lines += [f"  input {_field(c)}" for c in diff.inputs]
    lines += [f"  outputs.{_field(c)}" for c in diff.outputs[:OUTPUT_LINES]]
    version = next((c.after for c in diff.outputs if c.field == "version"), None)
    if isinstance(version, str) and (origin := _provenance(version)):
        lines.append(f"  {origin}")
    if len(diff.outputs) > OUTPUT_LINES:
        lines.append(f"  ... {len(diff.outputs) - OUTPUT_LINES} more output fields (--json)")
    return lines


def _print_results(
    address: str, in_lock: bool, found: Served | None, evidence: list[Evidence]
) -> None:
    if not (Address.parse(address).kind == DEPLOYMENT and in_lock):
        for item in evidence:
            _line(f"metrics {_evidence(item)}")
        return
    if found is None:
        _line("serves: not recorded (the lock entry has no outputs.version)")
        return
    _line(f"serves {found.version}")
    if origin := _provenance(found.version):
        _line(origin, 8)
    for item in found.lineage:
        made = f"trained by {item.run}"
        if item.dataset:
            made += f" on {item.dataset} {short(item.dataset_version)}"
        _line(made, 8)
        if item.collected:
            windows = ", ".join(Path(p).name for p in item.collected)
            approved = f", approved in PR #{item.approved_in}" if item.approved_in else ""
            _line(f"with collected window(s) {windows}{approved}", 10)
    for item in found.evidence:
        _line(_evidence(item), 8)
    if not found.evidence:
        _line("no metrics for this version in the same lock", 8)


def _print_change(change: ResourceChange) -> None:
    console.print(_commit_header(change.commit), highlight=False)
    if change.spec_change == "created":
        _line(f"spec: created in {change.spec_file}")
    elif change.spec_change == "deleted":
        _line(f"spec: removed from {change.spec_file}")
    else:
        for item in change.spec:
            _line(_field(item))
    for diff in change.entries:
        for index, text in enumerate(_entry(diff)):
            _line(("lock " if index == 0 else "     ") + text)
    # A spec-only commit leaves the lock's metrics as they were: they belong to an older change.
    evidence = change.evidence if change.entries else []
    _print_results(change.address, change.in_lock, change.served, evidence)


def _print_snapshot(found: Snapshot) -> None:
    info = found.commit
    pr = f", PR #{info.pr}" if info.pr is not None else ""
    console.print(
        Text.assemble(
            (found.address, "bold"),
            " at ",
            (info.short, "yellow"),
            f" ({info.date[:10]}, {info.author}{pr}: {info.subject})",
        ),
        highlight=False,
    )
    if not found.entries:
        _line("not in llmops.lock at this commit (not applied yet, or removed)")
    for address, entry in sorted(found.entries.items()):
        runner = f" (runner {entry['code_version']})" if entry.get("code_version") else ""
        _line(f"{address}: digest {short(entry.get('digest'))}{runner}")
        outputs = {
            k: v
            for k, v in flatten(entry.get("outputs") or {}).items()
            if not k.startswith(("metrics.", "gates."))
        }
        if outputs:
            _line("outputs " + ", ".join(f"{k} {_show(v)}" for k, v in outputs.items()), 4)
        if isinstance(outputs.get("version"), str) and (origin := _provenance(outputs["version"])):
            _line(origin, 4)
    _print_results(found.address, bool(found.entries), found.served, found.evidence)
    last = found.last_change
    if last is None:
        _line("no change to it in the history of this commit")
        return
    info = last.commit
    pr = f", PR #{info.pr}" if info.pr is not None else ""
    merged = f" (merged in {info.merged_in[:7]})" if info.merged_in else ""
    _line(
        f"last changed in {info.short} by {info.author} on {info.date[:10]}{pr}{merged}: "
        f"{info.subject}"
    )
