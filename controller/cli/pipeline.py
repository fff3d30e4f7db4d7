"""CLI `llmops pipeline run|status`: the production loop of a Pipeline spec (controller/loop)."""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import typer
from rich.table import Table

from controller.cli.common import (
    Exit,
    JsonOption,
    RootOption,
    console,
    err_console,
    resolve_root,
)
from controller.loop.run import PipelineRun, PipelineState
from controller.state.paths import StatePaths

pipeline_app = typer.Typer(help="The production loop: collected data -> retrain -> pull request.")


def github_publisher(base: str = "main") -> Any:
    """Opens or updates a pull request into `base` when GITHUB_TOKEN and GITHUB_REPOSITORY
    are set; None otherwise (branches are still pushed)."""
    from controller.publish.pull_requests import (
        open_or_update_pull_request,
        repository_from_environment,
    )

    if not (os.environ.get("GITHUB_TOKEN") and os.environ.get("GITHUB_REPOSITORY")):
        return None
    context = repository_from_environment()

    def publish(
        head: str, title: str, body: str, reviewers: list[str], labels: list[str]
    ) -> dict[str, Any]:

        outcome = open_or_update_pull_request(context, head, base, title, body, reviewers, labels)
        return {"number": outcome.number, "url": outcome.url, "created": outcome.created}

    return publish


def failure_reporter(name: str) -> Any:
    """A failing commit status and an issue for a pipeline run; None without GitHub."""
    from controller.publish.pull_requests import report_failed_run, repository_from_environment

    if not (os.environ.get("GITHUB_TOKEN") and os.environ.get("GITHUB_REPOSITORY")):
        return None
    context = repository_from_environment()

    def report_failure(sha: str, message: str) -> None:

        title = f"llmops pipeline {name}: regression test failed"
        report_failed_run(context, sha, title, message, pipeline=name)

    return report_failure


@pipeline_app.command("run")
def run_command(
    name: Annotated[str, typer.Argument(help="The Pipeline spec's name.")],
    root: RootOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Evaluate the trigger and say what would run.")
    ] = False,
    scheduled: Annotated[
        bool,
        typer.Option(
            "--scheduled",
            help="Started by the scheduler: also require the spec's schedule to be due "
            "(missed ticks are not caught up one by one).",
        ),
    ] = False,
    base: Annotated[str, typer.Option(help="The branch pull requests go into.")] = "main",
    remote: Annotated[str, typer.Option(help="The git remote branches are pushed to.")] = "origin",
    as_json: JsonOption = False,
) -> None:
    """Run the loop: data, retrain, regression test, pull request.

    The steps: trigger, update_dataset, retrain, regression_test, open_pull_request. Exit 0
    done or skipped, 1 a step failed (the gate is named), 2 bad spec, 4 already running.
    """
    top = resolve_root(root)
    publish = None if dry_run else github_publisher(base)
    report_failure = None if dry_run else failure_reporter(name)
    runner = PipelineRun(
        top,
        name,
        err_console if as_json else console,
        base=base,
        remote=remote,
        scheduled=scheduled,
        publish=publish,
        report_failure=report_failure,
    )
    record = runner.run(dry_run=dry_run)
    if as_json:
        print(json.dumps(record.as_dict(), indent=2, sort_keys=True))
    else:
        console.print(f"pipeline {name}: [bold]{record.status}[/bold]: {record.message}")
    raise typer.Exit(Exit.OK)


@pipeline_app.command("status")
def status_command(
    name: Annotated[str, typer.Argument(help="The Pipeline spec's name.")],
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """The last run, one in progress or interrupted, and recent runs."""
    top = resolve_root(root)
    state = PipelineState.read(StatePaths.for_repo(top).pipeline(name) / "state.json")
    if as_json:
        print(
            json.dumps(
                {"last": state.last, "current": state.current, "runs": state.runs},
                indent=2,
                sort_keys=True,
            )
        )
        raise typer.Exit(Exit.OK)
    if state.current:
        done = ", ".join(state.current.get("steps") or {}) or "no step"
        console.print(
            f"run {state.current['id']} did not finish ({done} done); "
            f"`llmops pipeline run {name}` resumes it"
        )
    table = Table("run", "status", "rows", "branch", "result")
    for run in state.runs[-10:]:
        window = run.get("window") or {}
        table.add_row(
            run["id"],
            run["status"],
            f"{window.get('kept', 0)}/{window.get('rows', 0)}",
            run.get("branch", ""),
            run.get("message", ""),
        )
    console.print(table if state.runs else f"pipeline {name} has not run yet")
