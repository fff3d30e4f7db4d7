"""CLI `llmops ui`: serve the dashboard (controller/ui/) over this repository's state."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from controller.cli.common import Exit, RootOption, err_console, fail, resolve_root


def ui_command(
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")
    ] = 8765,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on; anything but a loopback address needs --token-env.",
        ),
    ] = "127.0.0.1",
    token_env: Annotated[
        str | None,
        typer.Option(
            "--token-env",
            help="Environment variable holding the token every request must carry "
            "(?token=... once, or 'Authorization: Bearer ...'); required off loopback.",
        ),
    ] = None,
    root: RootOption = None,
) -> None:
    """A local dashboard: status, models, runs, evaluations, arenas.

    Status and plan, models, datasets, runs and curves, evaluations, arena with blind
    voting, brain scans, deployments and history. Read-only except votes.
    """
    from controller.ui.app import is_loopback
    from controller.ui.server import create_app

    token = None
    if token_env is not None:
        token = os.environ.get(token_env, "")
        if not token:
            raise fail(
                f"--token-env {token_env}: the environment variable is not set or empty; "
                "set it to a long random secret",
                Exit.INVALID,
            )
    if not is_loopback(host) and token is None:
        raise fail(
            f"refusing to listen on {host} without a token: the dashboard shows every model, "
            "evaluation and arena answer and takes votes; pass --token-env NAME with a secret "
            "in $NAME, or listen on 127.0.0.1",
            Exit.INVALID,
        )
    import uvicorn

    top = resolve_root(root)
    app = create_app(top, token=token)
    shown = f"[{host}]" if ":" in host else host
    err_console.print(f"llmops dashboard for {top} on http://{shown}:{port}/ (Ctrl+C stops it)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
