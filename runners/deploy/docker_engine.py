"""Runner `deploy`, target docker, engine: find docker or podman (here or on a host), build a
rendered context (docker_context.py), and run, inspect and stop the deployment's container.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from runners.deploy import environment
from runners.deploy.docker_context import INDEX_ENV, MANIFEST, TORCH, TORCH_INDEX, WHEELS_ENV
from runners.deploy.release import (
    CONTAINER_COLLECT_DIR,
    CONTAINER_PORT,
    DeployError,
    Release,
)


@dataclass(frozen=True)
class BuildResult:
    built: bool
    tag: str
    context: Path
    message: str
    image_id: str | None = None


ENGINES = ("docker", "podman")


def engine_env(docker: str, host: str | None) -> dict[str, str] | None:
    """The environment that points `docker` at `host` (DOCKER_HOST, or CONTAINER_HOST for
    podman: ssh://user@machine/run/podman/podman.sock, tcp://...); None for this machine."""
    if not host:
        return None
    name = "CONTAINER_HOST" if Path(docker).name.startswith("podman") else "DOCKER_HOST"
    return {**os.environ, name: host}


def _engine(docker: str, host: str | None = None) -> str | None:
    """None when a Docker engine (docker, or podman, which takes the same commands) answers,
    else why not."""
    if shutil.which(docker) is None:
        return f"no '{docker}' command on PATH"
    # podman's `info` has no ServerVersion; its own version field says it answers.
    field = (
        "{{.Version.Version}}" if Path(docker).name.startswith("podman") else "{{.ServerVersion}}"
    )
    try:
        probe = subprocess.run(
            [docker, "info", "--format", field],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=engine_env(docker, host),
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"'{docker} info' failed: {err}"
    if probe.returncode != 0:
        detail = (probe.stderr or probe.stdout).strip().splitlines()
        return f"'{docker} info' exited {probe.returncode}" + (f": {detail[-1]}" if detail else "")
    return None


def find_engine(docker: str | None = None, host: str | None = None) -> tuple[str | None, str]:
    """(command, "") for `docker`, or the first of docker and podman that answers (on
    `host` when given); (None, why not) when none does."""
    whys = []
    for candidate in (docker,) if docker else ENGINES:
        why = _engine(candidate, host)
        if why is None:
            return candidate, ""
        whys.append(why)
    return None, "; ".join(whys)


def build(
    context: Path, tag: str | None = None, docker: str | None = None, host: str | None = None
) -> BuildResult:
    """Build the context with `docker`, or with docker or podman, whichever answers;
    otherwise say how to build it. The image id is the digest of its config."""
    manifest_path = context / MANIFEST
    if not manifest_path.is_file():
        raise DeployError(f"{context} is not an llmops build context (no {MANIFEST}); render it")
    tag = tag or json.loads(manifest_path.read_text(encoding="utf-8"))["tag"]
    engine, why = find_engine(docker, host)
    if engine is None:
        return BuildResult(
            built=False,
            tag=tag,
            context=context,
            message=(
                f"no Docker engine answers here ({why}); the context is at {context}, "
                f"build it with: docker build -t {tag} {context}"
            ),
        )
    image_id = build_image(engine, context, tag, host) or None
    return BuildResult(True, tag, context, f"built {tag} ({image_id or 'id unknown'})", image_id)


def build_image(engine: str, context: Path, tag: str, host: str | None = None) -> str:
    """`engine build -t tag context`; the image's id. A failure names where torch came from,
    the step most likely to fail on a machine with a partial view of the internet."""
    env = engine_env(engine, host)
    done = subprocess.run(
        [engine, "build", "-t", tag, str(context)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if done.returncode != 0:
        # pip's complaint is on stdout (the step's output), the engine's verdict on stderr.
        lines = (done.stdout.strip().splitlines() + done.stderr.strip().splitlines())[-25:]
        try:
            torch = json.loads((context / MANIFEST).read_text(encoding="utf-8")).get("torch", {})
        except (OSError, ValueError):
            torch = {}
        hint = (
            f"torch came from {', '.join(f'{k} {v}' for k, v in torch.items())}; where that "
            f"is unreachable, set {WHEELS_ENV}=DIR (a folder holding the {TORCH} CPU wheel) "
            f"or {INDEX_ENV}=URL (a mirror of {TORCH_INDEX}) and render again"
            if torch
            else ""
        )
        raise DeployError(
            f"{Path(engine).name} build -t {tag} {context} failed:\n"
            + "\n".join(lines)
            + (f"\n{hint}" if hint else "")
        )
    inspect = subprocess.run(
        [engine, "image", "inspect", "--format", "{{.Id}}", tag],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    return image_digest(inspect.stdout)


def image_digest(text: str) -> str:
    """An image id as 'sha256:<hex>' (docker prints it so, podman without the prefix)."""
    text = text.strip()
    return text if not text or text.startswith("sha256:") else f"sha256:{text}"


LABEL_DEPLOYMENT = "llmops.dev/deployment"
# What the container serves, read back by drift (the lock says what it should serve).
LABEL_VERSION = "llmops.dev/model-version"


@dataclass(frozen=True)
class Running:
    container: str
    image_id: str
    endpoint: str  # http://host:port (the OpenAI routes under /v1)


def container_name(deployment: str) -> str:
    return f"llmops-{deployment}"


def _endpoint_host(host: str | None) -> str:
    """Where the published port is reached: this machine, or the engine's machine."""
    if not host or host.startswith("unix:"):
        return "127.0.0.1"
    return urlsplit(host).hostname or "127.0.0.1"


def run_args(
    engine: str,
    release: Release,
    tag: str,
    env: Mapping[str, str] | None = None,
    host: str | None = None,
    extra_args: list[str] | None = None,
) -> list[str]:
    """The `engine run` command for the deployment's container. The container's environment
    is the image's own (its ENV lines) plus the names in `env` only (the key, under the
    runtime's variable): the engine copies nothing else from the environment it is run in."""
    name = container_name(release.name)
    port = int(release.spec["port"])
    # On this machine (no host, or a local socket) the port is for this machine only.
    published = "127.0.0.1:" if _endpoint_host(host) == "127.0.0.1" else ""
    args = [engine, "run", "-d", "--name", name, "--label", f"{LABEL_DEPLOYMENT}={release.name}"]
    args += ["--label", f"{LABEL_VERSION}={release.model_version}"]
    args += ["-p", f"{published}{port}:{CONTAINER_PORT}"]
    # `-e NAME` without a value: the key travels in the environment, not the command line.
    for key in sorted(env or {}):
        args += ["-e", key]
    if release.spec["collect"]["enabled"]:
        args += ["-v", f"llmops-collect-{release.name}:{CONTAINER_COLLECT_DIR}"]
    return [*args, *(extra_args or []), tag]


def run(
    release: Release,
    tag: str,
    env: dict[str, str] | None = None,
    docker: str | None = None,
    host: str | None = None,
    extra_args: list[str] | None = None,
    timeout_s: float = 600.0,
    poll_s: float = 0.5,
) -> Running:
    """Start the image as the deployment's container (replacing an earlier one), with the
    deployment's port published and its key variable passed, and wait until its readiness
    route answers 200 (the model loaded and its smoke prompts answered). A key goes to an
    engine on another machine only when the operator trusts it (environment.py)."""
    if env:  # before anything reaches the engine
        environment.check_key_destination(release.name, host)
    engine, why = find_engine(docker, host)
    if engine is None:
        raise DeployError(f"no Docker engine answers here ({why}) to run {tag}")
    args = run_args(engine, release, tag, env, host, extra_args)
    name = container_name(release.name)
    base_env = engine_env(engine, host) or dict(os.environ)
    subprocess.run(
        [engine, "rm", "-f", "-v", name], capture_output=True, text=True, check=False, env=base_env
    )
    port = int(release.spec["port"])
    started = subprocess.run(
        args, capture_output=True, text=True, check=False, env={**base_env, **(env or {})}
    )
    if started.returncode != 0:
        raise DeployError(f"{engine} run {tag} failed: {started.stderr.strip()[-2000:]}")
    endpoint = f"http://{_endpoint_host(host)}:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        status = container_state(release.name, engine, host)
        if status != "running":
            logs = subprocess.run(
                [engine, "logs", name], capture_output=True, text=True, check=False, env=base_env
            )
            tail = (logs.stdout + logs.stderr).strip().splitlines()[-15:]
            raise DeployError(
                f"container {name} ({tag}) stopped ({status}) before it was ready:\n"
                + "\n".join(tail)
            )
        try:
            with urllib.request.urlopen(f"{endpoint}/v2/health/ready", timeout=5) as answer:
                if answer.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise DeployError(
                f"container {name} ({tag}) not ready after {timeout_s:g} s; "
                f"see '{Path(engine).name} logs {name}'"
            )
        time.sleep(poll_s)
    image_id = subprocess.run(
        [engine, "inspect", "--format", "{{.Image}}", name],
        capture_output=True,
        text=True,
        check=False,
        env=base_env,
    ).stdout
    return Running(name, image_digest(image_id), endpoint)


@dataclass(frozen=True)
class ContainerInfo:
    status: str  # running, exited, ...; "missing" when there is no container
    version: str | None = None  # the model version it serves (its label)
    image_id: str | None = None


def inspect_container(
    deployment: str, docker: str | None = None, host: str | None = None
) -> ContainerInfo | None:
    """The deployment's container as the engine reports it; None when no engine answers
    (nothing is known either way)."""
    engine, _ = find_engine(docker, host)
    if engine is None:
        return None
    form = f'{{{{.State.Status}}}}\t{{{{index .Config.Labels "{LABEL_VERSION}"}}}}\t{{{{.Image}}}}'
    done = subprocess.run(
        [engine, "inspect", "--type", "container", "--format", form, container_name(deployment)],
        capture_output=True,
        text=True,
        check=False,
        env=engine_env(engine, host),
    )
    fields = done.stdout.strip().split("\t")
    if done.returncode != 0 or not fields[0]:
        return ContainerInfo("missing")
    version = fields[1] if len(fields) > 1 and fields[1] not in ("", "<no value>") else None
    image = image_digest(fields[2]) if len(fields) > 2 and fields[2] else None
    return ContainerInfo(fields[0], version, image)


def container_state(
    deployment: str, docker: str | None = None, host: str | None = None
) -> str | None:
    """The deployment's container status (running, exited, ...); "missing" when there is
    none; None when no engine answers (nothing is known)."""
    info = inspect_container(deployment, docker, host)
    return info.status if info else None


def stop(deployment: str, docker: str | None = None, host: str | None = None) -> bool:
    """Stop and remove the deployment's container; False when there was none."""
    engine, _ = find_engine(docker, host)
    if engine is None:
        return False
    done = subprocess.run(
        [engine, "rm", "-f", "-v", container_name(deployment)],
        capture_output=True,
        text=True,
        check=False,
        env=engine_env(engine, host),
    )
    return done.returncode == 0 and bool(done.stdout.strip())
