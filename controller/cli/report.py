"""CLI `llmops report --base <ref>`: the pull request's report, written and optionally posted.

Parses arguments, renders and publishes; controller/report/inputs.py gathers what the
report shows. Exit 1 when a gate failed. A gate whose evaluation is still pending (the plan
has to run it on these specs) fails nothing yet: exit 0, the report's headline says it is
pending and `--post` sets its commit status to "pending" (GitHub shows it as in progress and
a required check blocks merging until apply on the branch decides it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from controller.cli.common import Exit, RootOption, console, fail, load_or_exit, resolve_root
from controller.plan.types import DesiredState
from controller.report.inputs import ASSETS_DIR, ReportInputs, gather_report_inputs
from controller.report.markdown import GateOutcome, gate_outcomes, render_report
from controller.state.git import GitError
from controller.state.lockfile import LockFileError
from controller.state.paths import StatePaths


def report_command(
    base: Annotated[str, typer.Option("--base", help="Git ref the pull request merges into.")],
    root: RootOption = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write the Markdown here (default: <state>/reports/report.md)."
        ),
    ] = None,
    post: Annotated[
        bool,
        typer.Option(
            "--post",
            help="Post as one pull-request comment (updated in place) and set a commit status "
            "per gate; needs GITHUB_TOKEN, GITHUB_REPOSITORY and a pull_request event.",
        ),
    ] = False,
    pull: Annotated[int | None, typer.Option("--pull", help="Pull request number.")] = None,
    sha: Annotated[str | None, typer.Option("--sha", help="Head commit for statuses.")] = None,
) -> None:
    """Markdown for the pull request: plan, metrics, gates, curves.

    The plan, metric tables with intervals and gates, loss curves, dataset and deployment
    changes. Exit 1 when a gate failed; gates of evaluations still pending exit 0 and are
    posted as pending.
    """
    top = resolve_root(root)
    loaded = load_or_exit(top)
    target = output or StatePaths.for_repo(top).reports / "report.md"
    inputs = _gather(top, loaded.desired, base, target)
    markdown = render_report(inputs)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(markdown, encoding="utf-8")
    console.print(f"report written to {target}")
    gates = gate_outcomes(inputs)
    if post:
        _post(markdown, gates, len(inputs.plan.pending), pull, sha)
    raise typer.Exit(Exit.FAILED if any(g.passed is False for g in gates) else Exit.OK)


def _gather(top: Path, desired: DesiredState, base: str, target: Path) -> ReportInputs:
    """The report's inputs; a bad `--base` or lock file exits 2 with what is wrong."""
    try:
        return gather_report_inputs(top, desired, base, target.parent / ASSETS_DIR)
    except GitError as err:
        said = str(err)
        where = f"--base {said}" if said.startswith(f"{base}: ") else f"--base {base}: {said}"
        raise fail(where, Exit.INVALID) from err
    except LockFileError as err:
        raise fail(err.diagnostic.render(), Exit.INVALID) from err


def _post(
    markdown: str, gates: list[GateOutcome], changes: int, pull: int | None, sha: str | None
) -> None:
    """Post the report as the pull request's comment, a commit status per gate rule and one
    for the plan."""
    from controller.publish import (
        PLAN_CONTEXT,
        GateStatus,
        PublishError,
        context_from_environment,
        gate_context,
        publish,
    )

    statuses = []
    for gate in gates:
        task, _, metric = gate.metric.partition("/")
        state = "pending" if gate.pending else ("success" if gate.passed else "failure")
        statuses.append(
            GateStatus(
                # One status per gate rule: a metric may have several (max_drop and min).
                f"{gate_context(gate.suite, task, metric)}/{gate.rule.partition(' ')[0]}",
                state,
                f"{gate.name}: {gate.detail}",
                None,
            )
        )
    statuses.append(
        GateStatus(
            PLAN_CONTEXT,
            "success",
            f"{changes} change(s) planned" if changes else "no changes",
            None,
        )
    )
    try:
        posted = publish(markdown, statuses, context_from_environment(pull_number=pull, sha=sha))
    except PublishError as err:
        raise fail(str(err)) from err
    console.print(f"report {'posted' if posted.created else 'updated'}: {posted.url}")
