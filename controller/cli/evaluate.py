"""CLI `llmops eval run|compare` and `llmops bless`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from controller.api.evalsuite import EvalSuiteSpec
from controller.apply.evaluate import Comparison, Evaluator
from controller.cli.common import (
    Exit,
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
from controller.report.terminal import gate_line
from runners.errors import LlmopsError

eval_app = typer.Typer(
    help="Evaluate models on suites, compare them, decide gates.", no_args_is_help=True
)


def _evaluator(top: Path, suite: str) -> Evaluator:
    loaded = load_or_exit(top)
    suites = [r.name for r, _ in loaded.desired.specs(EvalSuiteSpec)]
    if suite not in suites:
        raise unknown("EvalSuite", suite, suites)
    return Evaluator(loaded, open_registry_or_fail(top), err_console)


def print_comparison(comparison: Comparison) -> None:
    table = Table(title=f"{comparison.suite}: {comparison.candidate} vs {comparison.baseline}")
    for column in (
        "metric",
        "baseline",
        "candidate",
        "difference",
        "95% interval",
        "p",
        "better/worse",
    ):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for m in comparison.metrics:
        table.add_row(
            m.metric,
            f"{m.baseline:.4g}",
            f"{m.candidate:.4g}",
            f"{m.difference:+.4g}",
            f"[{m.low:+.4g}, {m.high:+.4g}]",
            f"{m.p_value:.3f}",
            f"{len(m.flipped.get('better', []))}/{len(m.flipped.get('worse', []))}",
        )
    console.print(table)
    for gate in comparison.gates:
        console.print(gate_line(f"{gate.metric} {gate.rule}", gate.passed, gate.detail))


@eval_app.command("run")
def run(
    suite: Annotated[str, typer.Argument(help="EvalSuite spec name.")],
    model: Annotated[str, typer.Option("--model", help="name, name@version or name@alias")],
    root: RootOption = None,
    force: Annotated[bool, typer.Option(help="Evaluate again even when stored.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Evaluate a model; with a blessed baseline, also compare and apply the gates."""
    evaluator = _evaluator(resolve_root(root), suite)
    outcome = evaluator.run(suite, model, force=force)
    comparison = (
        evaluator.compare(suite, None, model) if evaluator.blessed(suite) is not None else None
    )
    if as_json:
        print(
            json.dumps(
                {
                    "model": outcome.ref,
                    "status": outcome.status,
                    "metrics": outcome.summary["metrics"],
                    "results": str(outcome.folder),
                    "comparison": comparison.as_dict() if comparison else None,
                },
                indent=2,
            )
        )
    else:
        table = Table(title=f"{suite} on {outcome.ref} ({outcome.status})")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in outcome.summary["metrics"].items():
            table.add_row(name, "-" if value is None else f"{value:.4g}")
        console.print(table)
        console.print(f"per-sample results: {outcome.folder}")
        if comparison:
            print_comparison(comparison)
    if comparison is not None and not comparison.passed:
        raise typer.Exit(Exit.FAILED)


@eval_app.command("served")
def served(
    suite: Annotated[str, typer.Argument(help="EvalSuite spec name.")],
    deployment: Annotated[str, typer.Option("--deployment", help="Deployment name.")],
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Requests in flight.")
    ] = 8,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate what a deployment serves, over its API, beside the same version evaluated in
    process: the metrics of both and their difference (a runtime that answers differently
    from its model shows here). The deployment's key variable must be set, as for apply."""
    top = resolve_root(root)
    evaluator = _evaluator(top, suite)
    try:
        outcome = evaluator.run_served(suite, deployment, concurrency=concurrency)
    except LlmopsError as err:
        raise fail(str(err)) from None
    local = evaluator.run(suite, outcome.ref)
    rows = {
        name: (value, local.summary["metrics"].get(name))
        for name, value in outcome.summary["metrics"].items()
    }
    if as_json:
        print(
            json.dumps(
                {
                    "deployment": deployment,
                    "model": outcome.ref,
                    "served": outcome.summary["metrics"],
                    "in_process": local.summary["metrics"],
                    "results": str(outcome.folder),
                },
                indent=2,
            )
        )
        return
    table = Table(title=f"{suite} on deployment {deployment} ({outcome.ref})")
    for column in ("metric", "served", "in process", "difference"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, (value, in_process) in rows.items():
        difference = (
            f"{value - in_process:+.4g}" if value is not None and in_process is not None else "-"
        )
        table.add_row(
            name,
            "-" if value is None else f"{value:.4g}",
            "-" if in_process is None else f"{in_process:.4g}",
            difference,
        )
    console.print(table)
    console.print(f"per-sample results: {outcome.folder}")


@eval_app.command("compare")
def compare(
    candidate: Annotated[str, typer.Option("--candidate", help="Model reference.")],
    suite: Annotated[str, typer.Option("--suite", help="EvalSuite spec name.")],
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline", help="Model reference; the suite's blessed baseline when omitted."
        ),
    ] = None,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every metric: baseline, candidate, difference, paired bootstrap interval, p, flips.
    Exit 1 when a gate fails."""
    evaluator = _evaluator(resolve_root(root), suite)
    comparison = evaluator.compare(suite, baseline, candidate)
    if as_json:
        print(json.dumps(comparison.as_dict(), indent=2))
    else:
        print_comparison(comparison)
    failed = [g for g in comparison.gates if not g.passed]
    if failed:
        err_console.print(
            "failing gate(s): " + ", ".join(f"{g.metric} {g.rule}" for g in failed), style="red"
        )
        raise typer.Exit(Exit.FAILED)


def bless_command(
    suite: Annotated[str, typer.Argument(help="EvalSuite spec name.")],
    model: Annotated[str, typer.Argument(help="The model whose results become the baseline.")],
    root: RootOption = None,
) -> None:
    """Write the suite's baseline file from a model's results; review and commit it."""
    top = resolve_root(root)
    evaluator = _evaluator(top, suite)
    path = evaluator.bless(suite, model)
    shown = path.relative_to(top) if path.is_relative_to(top) else path
    console.print(
        f"wrote {shown}; commit it so the approval is reviewed: "
        f"git add {shown} && git commit -m 'bless {suite}: {model}'"
    )
