"""podman for image tests: the engine, a base image built from Debian packages, the host's
site-packages for the heavy Python dependencies.

No container registry is reachable here, so the base image the Dockerfiles name
(`python:3.11-slim`) is made with debootstrap (bookworm's python3 is 3.11) and imported under
that name. The rootfs tarball is cached in ~/.cache/llmops/rootfs, so a second run on the
same machine skips debootstrap; podman's own storage keeps the imported base and the built
layers between runs.

Installing torch inside an image is the slow part (and download.pytorch.org, which the
rendered Dockerfile names, is not reachable here): the tests build the rendered Dockerfile
without its two `pip install` steps and mount this checkout's virtualenv site-packages
read-only into the container instead (same CPython 3.11 ABI, same glibc as bookworm).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import pytest

ROOTFS_CACHE = Path.home() / ".cache" / "llmops" / "rootfs" / "bookworm-python3.tar"
BASE_IMAGE = "docker.io/library/python:3.11-slim"
CONTAINERS_CONF = Path(__file__).resolve().parents[2] / "shared/tools/podman/containers.conf"
HOST_SITE = "/opt/host-site"
PACKAGES = "python3,python3-pip,python3-venv,python-is-python3,ca-certificates"


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def podman(*args: str, check: bool = True, timeout: float = 1200) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(
            f"podman {' '.join(args[:3])} exited {done.returncode}: {done.stderr[-3000:]}"
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


def base_image() -> str:
    """The base image the Dockerfiles name, imported from a debootstrap rootfs (cached).
    Under a file lock: two pytest-xdist workers make it once."""
    engine()
    ROOTFS_CACHE.parent.mkdir(parents=True, exist_ok=True)
    with (ROOTFS_CACHE.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _base_image()


def _base_image() -> str:
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return BASE_IMAGE
    if not ROOTFS_CACHE.is_file():
        if shutil.which("debootstrap") is None or os.geteuid() != 0:
            pytest.skip("no base image and no debootstrap (as root) to make one")
        ROOTFS_CACHE.parent.mkdir(parents=True, exist_ok=True)
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
    podman(
        "import",
        "--change",
        'CMD ["/bin/bash"]',
        "--change",
        "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
        str(ROOTFS_CACHE),
        BASE_IMAGE,
    )
    return BASE_IMAGE


def without_pip(context: Path) -> Path:
    """The context's Dockerfile minus its pip installs (the packages are mounted instead)."""
    lines = (context / "Dockerfile").read_text().splitlines()
    kept = [
        line for line in lines if not line.startswith(("RUN pip install", "COPY requirements.txt"))
    ]
    path = context / "Dockerfile.mounted-packages"
    path.write_text("\n".join(kept) + "\n")
    return path


def build(context: Path, tag: str) -> str:
    """Build the context (its Dockerfile without the pip steps); returns the image id."""
    base_image()
    podman("build", "--pull=never", "-f", str(without_pip(context)), "-t", tag, str(context))
    return podman("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()


def run_args() -> list[str]:
    """What every test container gets: host networking, the host's packages read-only."""
    return [
        "--network",
        "host",
        "-v",
        f"{site_packages()}:{HOST_SITE}:ro",
        "-e",
        f"PYTHONPATH=/opt/llmops/src:{HOST_SITE}",
    ]
