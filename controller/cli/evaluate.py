"""CLI `llmops eval run|compare` and `llmops bless`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from controller.api.evalsuite import EvalSuiteSpec
from controller.apply.evaluate import Comparison, EndpointSubject, Evaluator
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
    """Evaluate a model; with a baseline, compare and apply the gates."""
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


# The options that describe an OpenAI-compatible endpoint (`eval served`, `eval compare`).
ServedModelOption = Annotated[
    str | None, typer.Option("--served-model", help="With --endpoint: the model to ask for.")
]
TokenizerOption = Annotated[
    str | None,
    typer.Option(
        "--tokenizer",
        help="With --endpoint: the registered model whose tokenizer "
        "the endpoint's model uses (name, name@version or name@alias).",
    ),
]
KeyEnvOption = Annotated[
    str | None,
    typer.Option("--key-env", help="With --endpoint: the variable holding its bearer key."),
]
ConcurrencyOption = Annotated[
    int, typer.Option("--concurrency", min=1, help="With --endpoint: requests in flight.")
]


@eval_app.command("served")
def served(
    suite: Annotated[str, typer.Argument(help="EvalSuite spec name.")],
    deployment: Annotated[
        str | None, typer.Option("--deployment", help="An applied Deployment's name.")
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option("--endpoint", help="Any OpenAI-compatible API root, e.g. http://host/v1."),
    ] = None,
    served_model: ServedModelOption = None,
    tokenizer: TokenizerOption = None,
    key_env: KeyEnvOption = None,
    concurrency: ConcurrencyOption = 8,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate what an endpoint serves, over its API.

    Through lm-eval's local-completions. With --deployment: an applied deployment, beside the
    same version evaluated in process (their difference shows a runtime that answers
    differently from its model); its key variable must be set, as for apply. With --endpoint,
    --served-model and --tokenizer: any OpenAI-compatible server.
    """
    if (deployment is None) == (endpoint is None):
        raise fail("give --deployment NAME, or --endpoint URL with --served-model", Exit.INVALID)
    if endpoint is not None and (served_model is None or tokenizer is None):
        raise fail("--endpoint needs --served-model and --tokenizer", Exit.INVALID)
    evaluator = _evaluator(resolve_root(root), suite)
    try:
        if deployment is not None:
            outcome = evaluator.run_served(suite, deployment, concurrency=concurrency)
        else:
            assert endpoint is not None and served_model is not None and tokenizer is not None
            outcome = evaluator.run_endpoint(
                suite, endpoint, served_model, tokenizer, key_env, concurrency
            )
    except LlmopsError as err:
        raise fail(str(err)) from None
    local = evaluator.run(suite, outcome.ref).summary["metrics"] if deployment else {}
    served_metrics = outcome.summary["metrics"]
    if as_json:
        print(
            json.dumps(
                {
                    "deployment": deployment,
                    "endpoint": endpoint,
                    "model": outcome.ref,
                    "served": served_metrics,
                    "in_process": local or None,
                    "results": str(outcome.folder),
                },
                indent=2,
            )
        )
        return
    _print_served(f"{suite} on {deployment or endpoint} ({outcome.ref})", served_metrics, local)
    console.print(f"per-sample results: {outcome.folder}")


def _print_served(title: str, served: dict[str, Any], local: dict[str, Any]) -> None:
    table = Table(title=title)
    columns = ("metric", "served", "in process", "difference") if local else ("metric", "served")
    for column in columns:
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, value in served.items():
        cells = [name, "-" if value is None else f"{value:.4g}"]
        if local:
            in_process = local.get(name)
            both = value is not None and in_process is not None
            cells += [
                "-" if in_process is None else f"{in_process:.4g}",
                f"{value - in_process:+.4g}" if both else "-",
            ]
        table.add_row(*cells)
    console.print(table)


@eval_app.command("compare")
def compare(
    suite: Annotated[str, typer.Option("--suite", help="EvalSuite spec name.")],
    candidate: Annotated[
        str | None,
        typer.Option("--candidate", help="Model reference; the --endpoint when omitted."),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            help="Model reference; with --candidate and --endpoint, the endpoint; else the "
            "suite's blessed baseline when omitted.",
        ),
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option("--endpoint", help="An OpenAI-compatible API root, e.g. http://host/v1."),
    ] = None,
    served_model: ServedModelOption = None,
    tokenizer: TokenizerOption = None,
    key_env: KeyEnvOption = None,
    concurrency: ConcurrencyOption = 8,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every metric: baseline, candidate, difference, interval, flips.

    The interval is a paired bootstrap. Exit 1 when a gate fails. With --endpoint (and
    --served-model, --tokenizer): an OpenAI-compatible endpoint is the candidate, or, with
    --candidate, the baseline, evaluated over its API as `llmops eval served` does.
    """
    subject = None
    if endpoint is not None:
        if served_model is None or tokenizer is None:
            raise fail("--endpoint needs --served-model and --tokenizer", Exit.INVALID)
        if candidate is not None and baseline is not None:
            raise fail(
                "--endpoint takes the place of --candidate or --baseline; give one of them",
                Exit.INVALID,
            )
        subject = EndpointSubject(endpoint, served_model, tokenizer, key_env, concurrency)
    elif candidate is None:
        raise fail("give --candidate MODEL, or --endpoint URL with --served-model", Exit.INVALID)
    evaluator = _evaluator(resolve_root(root), suite)
    try:
        comparison = evaluator.compare(suite, baseline, candidate, subject)
    except LlmopsError as err:
        raise fail(str(err)) from None
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
    """Write a suite's baseline file from a model's results.

    Review the file and commit it: the suite's gates compare against it."""
    top = resolve_root(root)
    evaluator = _evaluator(top, suite)
    path = evaluator.bless(suite, model)
    shown = path.relative_to(top) if path.is_relative_to(top) else path
    console.print(
        f"wrote {shown}; commit it so the approval is reviewed: "
        f"git add {shown} && git commit -m 'bless {suite}: {model}'"
    )
