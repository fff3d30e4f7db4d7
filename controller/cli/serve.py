"""CLI `llmops serve <deployment>`: run a Deployment's model in the foreground (Ctrl-C stops)."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer

from controller.api.deployment import DeploymentSpec
from controller.apply.deploy import Deployer
from controller.cli.common import (
    Exit,
    RootOption,
    console,
    fail,
    load_or_exit,
    open_registry_or_fail,
    resolve_root,
    unknown,
)
from controller.targets.local import SERVE_API_KEY_ENV
from runners.deploy import environment
from runners.deploy.release import client_key_env


def serve_command(
    deployment: Annotated[str, typer.Argument(help="Deployment spec name.")],
    root: RootOption = None,
    port: Annotated[int | None, typer.Option(help="Port; the spec's port by default.")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Serve a deployment's model here, in the foreground.

    With its limits, key and collection settings: the same runtime `apply` starts for
    target local.
    """
    top = resolve_root(root)
    loaded = load_or_exit(top)
    names = [r.name for r, _ in loaded.desired.specs(DeploymentSpec)]
    if deployment not in names:
        raise unknown("Deployment", deployment, names)
    registry = open_registry_or_fail(top)
    deployer = Deployer(loaded, registry, console)
    spec = deployer.spec(deployment)
    config, ref = deployer.runtime_config(deployment, spec)
    key = deployer.api_key(deployment, spec)
    config.pop("public_port", None)
    config.update(host=host, port=port or spec.port)
    folder = registry.paths.deployment(deployment)
    folder.mkdir(parents=True, exist_ok=True)
    config["state_dir"] = str(folder)  # its usage rows go where `llmops usage` reads them
    path = folder / "foreground.json"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    console.print(
        f"serving {ref} as '{deployment}' at http://{host}:{config['port']}/v1 (Ctrl-C stops)"
    )
    # The runtime runs model code: only its key and the minimal environment, as under apply.
    keys = {SERVE_API_KEY_ENV: key} if key else {}
    clients = deployer.client_keys(deployment, spec)
    keys |= {client_key_env(client): value for client, value in clients.items()}
    env = environment.minimal(keys)
    sys.stdout.flush()
    try:
        os.execve(sys.executable, [sys.executable, "-m", "runners.serve", str(path)], env)
    except OSError as err:  # exec only returns on failure
        raise fail(f"could not start the runtime: {err}", Exit.FAILED) from err
