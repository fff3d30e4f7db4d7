"""CLI `llmops images build [--push REGISTRY]`: llmops' own images from this checkout.

The runner image (what the Kubernetes executor's Jobs run) and the serving runtime image
(what KServe's ServingRuntime runs), built with docker or podman, whichever answers, tagged
`<llmops version>-<context digest>`, pushed to REGISTRY when asked. What was built and pushed
is recorded in the state folder (images.json); a Job or ServingRuntime whose spec keeps the
default image then names the pushed image by digest.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from controller import __version__
from controller.api.deployment import DeploymentSpec
from controller.cli.common import JsonOption, RootOption, console, resolve_root
from controller.state.paths import StatePaths
from runners.deploy import images
from runners.deploy.release import Release

images_app = typer.Typer(
    help="llmops' own images: the training runner and serving runtime.",
    no_args_is_help=True,
)


@images_app.command("build")
def build_command(
    push: Annotated[
        str | None,
        typer.Option("--push", metavar="REGISTRY", help="Push to REGISTRY (host[:port][/path])."),
    ] = None,
    engine: Annotated[
        str | None, typer.Option(help="docker or podman; by default whichever answers.")
    ] = None,
    tls_verify: Annotated[
        bool, typer.Option(help="Verify the registry's TLS certificate (podman).")
    ] = True,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Build the runner and serving images; --push records digests.

    With --push, push them and record their digests."""
    top = resolve_root(root)
    state = StatePaths.for_repo(top).root
    folder = state / "images"
    runner = images.render_runner_context(folder / "runner")
    # The runtime without weights; its config comes from LLMOPS_SERVE_CONFIG in the pod.
    release = Release(
        "llmops-serve",
        "none",
        DeploymentSpec(model="none", target="kserve").model_dump(),
        [],
    )
    serve = images.render_serve_context(folder / "serve", release)
    built = []
    for name, context, repository in (
        ("runner", runner, images.RUNNER_REPOSITORY),
        ("serve", serve, images.SERVE_REPOSITORY),
    ):
        tag = f"{repository}:{__version__}-{context.digest[7:19]}"
        with console.status(f"building {tag}"):
            item = images.build(context.path, tag, name, engine)
        if push:
            with console.status(f"pushing {tag} to {push}"):
                item = images.push(item, push, engine, tls_verify)
        built.append(item)
        if not as_json:
            console.print(
                f"{name}: {item.tag} ({item.image_id[:12]})"
                + (f" pushed as {item.pushed}" if item.pushed else "")
            )
    path = images.record(state, built)
    if as_json:
        print(
            json.dumps(
                {
                    "images": [
                        {"name": b.name, "tag": b.tag, "image_id": b.image_id, "pushed": b.pushed}
                        for b in built
                    ],
                    "recorded": str(path),
                },
                indent=2,
            )
        )
