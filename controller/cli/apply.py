"""CLI `llmops apply`: plan under the apply lock, then carry the plan out and record it."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

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
from controller.plan.address import Address


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
    as_json: JsonOption = False,
) -> None:
    """Carry out the plan: pull, prepare, train, evaluate, promote, deploy; write llmops.lock.

    Exit 0 when everything applied, 1 when an action failed (a gate, a job), 2 for invalid
    specs, 4 when another apply holds the lock and --no-wait was given.
    """
    from controller.apply.engine import Applier
    from controller.plan.planner import plan
    from controller.report.terminal import print_plan
    from controller.state.apply_mutex import ApplyBusy, exclusive_apply
    from controller.state.lockfile import LOCK_FILE, LockFileError
    from controller.state.paths import StatePaths
    from controller.workspace import observe

    top = resolve_root(root)
    loaded = load_or_exit(top)
    registry = open_registry_or_fail(top)
    out = err_console if as_json else console

    def waiting(who: str) -> None:
        err_console.print(f"waiting for another apply to finish ({who}) ...")

    try:
        with exclusive_apply(StatePaths.for_repo(top).root, wait=not no_wait, on_wait=waiting):
            # Planned only once the lock is held: whatever the other apply did is seen here.
            try:
                the_plan = plan(loaded.desired, observe(top, loaded.desired))
            except LockFileError as err:
                from controller.report.terminal import print_diagnostics

                print_diagnostics(err_console, [err.diagnostic])
                raise typer.Exit(Exit.INVALID) from err
            if not as_json:
                print_plan(console, the_plan)
            applier = Applier(loaded, registry, out, top / LOCK_FILE, skip_deploy=skip_deploy)
            report = applier.apply(the_plan)
    except ApplyBusy as err:
        err_console.print(f"error: {err}", style="red")
        raise typer.Exit(Exit.BUSY) from err
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        applied = len(report.applied)
        skipped = [r for r in report.results if r.status == "skipped"]
        console.print(
            f"apply: {applied} applied, {len(report.failed)} failed, {len(skipped)} skipped; "
            f"{LOCK_FILE} updated" if report.results else "apply: nothing to do"
        )
        for result in report.failed:
            err_console.print(f"failed: {result.address}: {result.message}", style="red")
        for result in skipped:
            console.print(f"skipped: {result.address} ({result.message})")
    failed_deployments = {
        address.name: r.message
        for r in report.failed
        if (address := Address.parse(r.address)).kind == "Deployment"
    }
    if revert_on_failure and failed_deployments:
        _propose_revert(top, failed_deployments)
    raise typer.Exit(Exit.FAILED if report.failed else Exit.OK)


def _propose_revert(top: Any, failures: dict[str, str]) -> None:
    from controller.cli.pipeline import github_publisher
    from controller.loop.revert import propose_revert

    publish = github_publisher()
    revert = propose_revert(top, failures, publish)
    err_console.print(f"revert: {revert.message}", style="yellow")
