"""CLI `llmops apply`: plan under the apply lock, then carry the plan out and record it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from controller.apply.engine import ApplyReport
from controller.apply.hooks import ConsoleHooks
from controller.cli.common import (
    Exit,
    JsonOption,
    RootOption,
    console,
    err_console,
    load_or_exit,
    open_registry_or_fail,
    resolve_root,
)
from controller.cli.pipeline import github_publisher
from controller.loop.revert import propose_revert
from controller.plan.kinds import DEPLOYMENT
from controller.report.terminal import print_diagnostics
from controller.state.apply_mutex import ApplyBusy
from controller.state.lockfile import LOCK_FILE, LockFileError
from controller.state.paths import StatePaths
from controller.state.provenance import check_state_folder, trust_context
from controller.workspace import apply_workspace


def apply_command(
    root: RootOption = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Exit 4 when another apply is running.")
    ] = False,
    skip_deploy: Annotated[
        bool,
        typer.Option("--skip-deploy", help="Run everything but deployments (pull requests)."),
    ] = False,
    revert_on_failure: Annotated[
        bool,
        typer.Option(
            "--revert-on-failure",
            help="When a deployment fails its post-deploy check (the previous version keeps "
            "serving), push a branch reverting HEAD and open a pull request (main's workflow).",
        ),
    ] = False,
    ref: Annotated[
        str | None,
        typer.Option(
            "--ref",
            help="The branch this apply is for (default: GITHUB_HEAD_REF, GITHUB_REF, else the "
            "checked-out branch). Results are trusted only for a protected ref (main, master, "
            "or those in LLMOPS_PROTECTED_REFS); a trusted apply does not reuse untrusted ones.",
        ),
    ] = None,
    allow_shared_state: Annotated[
        bool,
        typer.Option(
            "--allow-shared-state",
            help="Let an untrusted ref apply against a state folder a trusted apply uses "
            "(marked by state.json); refused otherwise, since a pull request's job would then "
            "write main's state (also LLMOPS_ALLOW_SHARED_STATE=1).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Carry out the plan: pull, prepare, train, evaluate, deploy.

    Writes llmops.lock.

    Exit 0 when everything applied, 1 when an action failed (a gate, a job), 2 for invalid
    specs, 4 when another apply holds the lock and --no-wait was given.
    """
    top = resolve_root(root)
    out = err_console if as_json else console
    report = _apply(top, ref, allow_shared_state, out, as_json, no_wait, skip_deploy)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        _print_summary(report)
    failed_deployments = {
        r.address.name: r.message for r in report.failed if r.address.kind == DEPLOYMENT
    }
    if revert_on_failure and failed_deployments:
        _propose_revert(top, failed_deployments)
    raise typer.Exit(Exit.FAILED if report.failed else Exit.OK)


def _apply(
    top: Path,
    ref: str | None,
    allow_shared_state: bool,
    out: Console,
    as_json: bool,
    no_wait: bool,
    skip_deploy: bool,
) -> ApplyReport:
    """Load, check the ref's trust against the state folder, then apply the workspace with
    the terminal hooks; invalid specs or lock file exit 2, a busy apply with --no-wait 4."""
    loaded = load_or_exit(top)
    trust = trust_context(top, ref)
    # Before the registry is opened (opening migrates it, a write): a pull request's job that
    # was given main's state folder stops here with the fix in the message.
    check_state_folder(trust, StatePaths.for_repo(top).root, allow_shared_state)
    registry = open_registry_or_fail(top)
    out.print(
        f"ref: {trust.ref or 'unknown'} ({'trusted' if trust.trusted else 'untrusted'}: "
        + (
            "reuses untrusted results only under the trust rule)"
            if trust.trusted
            else "results are kept apart; main will not promote or deploy them)"
        )
    )
    hooks = ConsoleHooks(out, wait_console=err_console, show_plan=not as_json)
    try:
        return apply_workspace(
            loaded, registry, trust, hooks, wait=not no_wait, skip_deploy=skip_deploy
        )
    except LockFileError as err:
        print_diagnostics(err_console, [err.diagnostic])
        raise typer.Exit(Exit.INVALID) from err
    except ApplyBusy as err:
        err_console.print(f"error: {err}", style="red")
        raise typer.Exit(Exit.BUSY) from err


def _print_summary(report: ApplyReport) -> None:
    """What apply did, then each failure and each skipped action with its reason."""
    skipped = [r for r in report.results if r.status == "skipped"]
    console.print(
        f"apply: {len(report.applied)} applied, {len(report.failed)} failed, "
        f"{len(skipped)} skipped; {LOCK_FILE} updated"
        if report.results
        else "apply: nothing to do"
    )
    for result in report.failed:
        err_console.print(f"failed: {result.address}: {result.message}", style="red")
    for result in skipped:
        console.print(f"skipped: {result.address} ({result.message})")


def _propose_revert(top: Any, failures: dict[str, str]) -> None:
    publish = github_publisher()
    revert = propose_revert(top, failures, publish)
    err_console.print(f"revert: {revert.message}", style="yellow")
