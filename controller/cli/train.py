"""CLI `llmops train`: train an experiment's runs and register the results."""

from __future__ import annotations

import io
import json
from typing import Annotated, Any

import typer
from rich.table import Table
from ruamel.yaml import YAML

from controller.apply.train import Trainer, TrainOutcome
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
from runners.train.log import LOG_FILE, first_last_eval, mean_tokens_per_s, read_log


def train_command(
    experiment: Annotated[str, typer.Argument(help="Experiment spec name.")],
    variant: Annotated[
        list[str] | None, typer.Option("--variant", help="Only this run (repeatable).")
    ] = None,
    root: RootOption = None,
    override: Annotated[
        list[str] | None, typer.Option("-o", "--override", help="Hydra override key=value.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Train again even when registered.")] = False,
    show_job: Annotated[
        bool, typer.Option("--show-job", help="Print the Kubernetes Job of each run; no training.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Train an experiment's runs into registered model versions.

    All its runs, or the one --variant names.
    """
    top = resolve_root(root)
    loaded = load_or_exit(top, override)
    if experiment not in loaded.runs:
        raise unknown("Experiment", experiment, loaded.runs)
    trainer = Trainer(loaded, open_registry_or_fail(top), err_console)
    runs = trainer.runs(experiment)
    wanted = variant or runs
    missing = [v for v in wanted if v not in runs]
    if missing:
        raise fail(
            f"experiment '{experiment}' has no run '{missing[0]}'; runs: {', '.join(runs)}",
            Exit.INVALID,
        )
    if show_job:
        stream = io.StringIO()
        YAML().dump_all([trainer.kubernetes_job(experiment, run) for run in wanted], stream)
        print(stream.getvalue(), end="")
        return
    outcomes = []
    for run in wanted:
        outcomes.append(trainer.train(experiment, run, force=force))
    overlay = trainer.overlay(experiment, outcomes)
    rows = [_row(outcome) for outcome in outcomes]
    if as_json:
        print(
            json.dumps({"experiment": experiment, "runs": rows, "curves": str(overlay)}, indent=2)
        )
        return
    _print_runs(experiment, rows)
    console.print(f"curves: {overlay}")


def _row(outcome: TrainOutcome) -> dict[str, Any]:
    """One trained run as `llmops train --json` lists it."""
    records = read_log(outcome.run_dir / LOG_FILE)
    first, last = first_last_eval(records)
    return {
        "run": outcome.run,
        "status": outcome.status,
        "ref": outcome.ref,
        "steps": outcome.result.get("steps"),
        "final_loss": outcome.result.get("final_loss"),
        "first_eval_loss": first,
        "last_eval_loss": last,
        "final_eval_loss": outcome.result.get("final_eval_loss"),
        "tokens_per_s": mean_tokens_per_s(records),
        "run_dir": str(outcome.run_dir),
    }


def _print_runs(experiment: str, rows: list[dict[str, Any]]) -> None:
    table = Table(title=f"{experiment}: training")
    for column in ("run", "status", "registered", "steps", "loss", "eval loss", "tokens/s"):
        table.add_column(column)

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for row in rows:
        eval_text = (
            f"{fmt(row['first_eval_loss'])} -> {fmt(row['final_eval_loss'])}"
            if row["final_eval_loss"] is not None
            else "-"
        )
        table.add_row(
            row["run"],
            row["status"],
            row["ref"],
            str(row["steps"] or "-"),
            fmt(row["final_loss"]),
            eval_text,
            "-" if row["tokens_per_s"] is None else f"{row['tokens_per_s']:.0f}",
        )
    console.print(table)
