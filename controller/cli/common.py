"""CLI, shared pieces: consoles, exit codes, root discovery and common options."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from enum import IntEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from controller.load.desired import Loaded
from controller.load.diagnostics import did_you_mean
from controller.report.terminal import print_diagnostics
from controller.state.paths import find_root
from controller.state.registry.db import RegistryUnavailable
from controller.state.registry.store import Registry
from controller.workspace import load, open_registry


class Exit(IntEnum):
    OK = 0
    FAILED = 1
    INVALID = 2
    CHANGES_PENDING = 3
    BUSY = 4


# Piped output (CI logs) gets a wide fixed width so tables stay readable.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

RootOption = Annotated[
    Path | None,
    typer.Option(
        "--root",
        help="Repository root; found from the current folder when unset.",
        envvar="LLMOPS_ROOT",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def resolve_root(root: Path | None) -> Path:
    return root.resolve() if root else find_root(Path.cwd())


def fail(message: str, code: Exit = Exit.FAILED) -> typer.Exit:
    err_console.print(f"error: {message}", style="red", soft_wrap=True)
    return typer.Exit(code)


def open_registry_or_fail(root: Path) -> Registry:
    """The repository's registry, or a clear error (exit 1) when it cannot be opened."""
    try:
        return open_registry(root)
    except RegistryUnavailable as err:
        raise fail(str(err)) from err


def load_or_exit(root: Path, overrides: list[str] | None = None) -> Loaded:
    """The repository's specs resolved, or their diagnostics printed and exit 2."""
    loaded = load(root, overrides=overrides)
    if not loaded.ok:
        print_diagnostics(err_console, loaded.diagnostics)
        raise typer.Exit(Exit.INVALID)
    return loaded


def unknown(kind: str, name: str, known: Iterable[str]) -> typer.Exit:
    """Exit 2 for a name that no spec of `kind` has, with a did-you-mean."""
    hint = did_you_mean(name, known)
    return fail(f"no {kind} spec named '{name}'" + (f"; {hint}" if hint else ""), Exit.INVALID)
