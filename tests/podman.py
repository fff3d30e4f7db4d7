"""podman for image tests: the engine, a base image built from Debian packages, honest builds
of the rendered contexts, a local image registry.

No container registry is reachable here, so the base image the Dockerfiles name
(`python:3.11-slim`) is made with debootstrap (bookworm's python3 is 3.11) and imported under
that name. The rootfs tarball is cached in ~/.cache/llmops/rootfs, so a second run on the
same machine skips debootstrap; podman's own storage keeps the imported base and the built
layers between runs, so a warm build of an unchanged context takes seconds.

The rendered Dockerfiles are built as they are, `pip install` steps included: torch comes
from where `runners.deploy.docker_context.torch_source` says (here the wheelhouse pip is configured
with, bind-mounted into the build; download.pytorch.org is not reachable), the requirements
from PyPI.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOTFS_CACHE = Path.home() / ".cache" / "llmops" / "rootfs" / "bookworm-python3.tar"
BASE_IMAGE = "docker.io/library/python:3.11-slim"
CONTAINERS_CONF = Path(__file__).resolve().parents[2] / "shared/tools/podman/containers.conf"
PACKAGES = "python3,python3-pip,python3-venv,python-is-python3,ca-certificates"
# The official python:3.11-slim installs with pip as root; bookworm's own python3 refuses to
# (PEP 668's EXTERNALLY-MANAGED) unless told, so the imported base is told.
BASE_ENV = ("PIP_CERT=/etc/ssl/certs/ca-certificates.crt", "PIP_BREAK_SYSTEM_PACKAGES=1")


def podman(*args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(
            f"podman {' '.join(args[:3])} exited {done.returncode}: "
            f"{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
    return done


def engine() -> None:
    """Skip unless podman answers; point it at the tools' containers.conf (runc, rlimits)."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed: 'apt-get install podman runc' (make engines)")
    if "CONTAINERS_CONF" not in os.environ and CONTAINERS_CONF.is_file():
        os.environ["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    probe = podman("info", "--format", "{{.Version.Version}}", check=False, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"podman does not answer here: {probe.stderr.strip()[-300:]}")


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One pytest-xdist worker at a time: the other then finds the work done (cached)."""
    ROOTFS_CACHE.parent.mkdir(parents=True, exist_ok=True)
    with (ROOTFS_CACHE.parent / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def base_image() -> str:
    """The base image the Dockerfiles name, imported from a debootstrap rootfs (cached)."""
    engine()
    with _locked("base"):
        return _base_image()


def _base_image() -> str:
    found = podman("image", "inspect", "--format", "{{json .Config.Env}}", BASE_IMAGE, check=False)
    if found.returncode == 0 and all(env in found.stdout for env in BASE_ENV):
        return BASE_IMAGE
    if not ROOTFS_CACHE.is_file():
        if shutil.which("debootstrap") is None or os.geteuid() != 0:
            pytest.skip("no base image and no debootstrap (as root) to make one")
        rootfs = Path(tempfile.mkdtemp(prefix="llmops-rootfs-"))
        try:
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", rootfs],
                check=True,
                capture_output=True,
                timeout=1200,
            )
            # pip inside a build needs the host's CA (a proxy's, where there is one).
            shutil.copyfile(
                "/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt"
            )
            part = ROOTFS_CACHE.with_suffix(".part")
            subprocess.run(["tar", "-C", rootfs, "-cf", part, "."], check=True, timeout=600)
            part.rename(ROOTFS_CACHE)
        finally:
            shutil.rmtree(rootfs, ignore_errors=True)
    changes = ["--change", 'CMD ["/bin/bash"]']
    for env in BASE_ENV:
        changes += ["--change", f"ENV {env}"]
    podman("import", *changes, str(ROOTFS_CACHE), BASE_IMAGE)
    return BASE_IMAGE


def build(context: Path, tag: str) -> str:
    """Build the rendered context as it is (its pip installs too); returns the image id.
    Layers already built by an earlier test or run are reused."""
    base_image()
    began = time.monotonic()
    with _locked("build"):
        podman("build", "--pull=never", "-t", tag, str(context))
    print(f"built {tag} in {time.monotonic() - began:.0f} s")
    return podman("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()


def run_args() -> list[str]:
    """What a test container gets: host networking, so its server is on 127.0.0.1."""
    return ["--network", "host"]


@contextlib.contextmanager
def registry(folder: Path) -> Iterator[str]:
    """Debian's docker-registry (distribution 2.8) on 127.0.0.1, for push and pull; skips
    where it is not installed."""
    from runners.deploy.local import free_port

    if shutil.which("docker-registry") is None:
        pytest.skip("no docker-registry: 'apt-get install docker-registry' (make engines)")
    port = free_port()
    config = folder / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage: {{filesystem: {{rootdirectory: {folder / 'blobs'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    with (folder / "registry.log").open("w") as log:
        process = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        for _ in range(100):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/v2/").status_code == 200:
                    break
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
