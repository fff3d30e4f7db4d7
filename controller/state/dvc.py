"""State, DVC: prepared data tracked in the repository, pushed to a DVC remote.

The default remote is a folder under .llmops/ (embedded default); any DVC remote works when
configured in .dvc/config. With an S3 artifact store (LLMOPS_STORE=s3://bucket/prefix) pushes
and pulls go to its dvc/ folder instead (remote `store`, endpoint from AWS_ENDPOINT_URL), so
every runner with the store URL shares the remote. Uses DVC's Python API (dvc.repo.Repo).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from controller.state.artifacts.url import open_store
from controller.state.paths import STORE_ENV
from runners.errors import LlmopsError

DEFAULT_REMOTE = "local"
DEFAULT_REMOTE_URL = "../.llmops/dvc-remote"  # relative to .dvc/, i.e. <repo>/.llmops/dvc-remote


class DvcError(LlmopsError):
    """A DVC operation failed; the message says which and why."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DVC prints hints for interactive use ('git add ...'); the CLI reports for itself."""
    from dvc.ui import ui

    logger = logging.getLogger("dvc")
    level, enabled = logger.level, ui._enabled
    logger.setLevel(logging.WARNING)
    ui._enabled = False
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
        ui._enabled = enabled


STORE_REMOTE = "store"


def store_config() -> dict[str, Any] | None:
    """DVC config that points the default remote at the artifact store's dvc/ folder."""
    store = open_store(os.environ.get(STORE_ENV, "").strip() or None)
    if store is None:
        return None
    remote = store.dvc_remote()
    if remote["url"].startswith("file://"):
        remote["url"] = remote["url"].removeprefix("file://")
    return {"core": {"remote": STORE_REMOTE}, "remote": {STORE_REMOTE: remote}}


def ensure_repo(root: Path) -> None:
    """Make `root` a DVC repository with the local default remote, unless it already is."""
    if (root / ".dvc").is_dir():
        return
    from dvc.repo import Repo

    no_scm = not (root / ".git").exists()
    with _quiet():
        Repo.init(str(root), no_scm=no_scm).close()
    # Written whole so the remote URL stays relative to .dvc/ (the DVC API would rebase it).
    (root / ".dvc" / "config").write_text(
        f"[core]\n    remote = {DEFAULT_REMOTE}\n"
        + ("    no_scm = True\n" if no_scm else "")
        + f"['remote \"{DEFAULT_REMOTE}\"']\n    url = {DEFAULT_REMOTE_URL}\n"
    )


def track_and_push(root: Path, folder: Path) -> str:
    """`dvc add` the folder and push it to the default remote; returns the .dir md5."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    relative = folder.relative_to(root).as_posix()
    try:
        # DVC resolves targets and stage folders against the working directory.
        with _quiet(), contextlib.chdir(root), Repo(str(root), config=store_config()) as repo:
            repo.add([relative])
            repo.push(targets=[f"{relative}.dvc"])
    except DvcException as err:
        raise DvcError(f"dvc add/push of {relative} failed: {err}") from err
    return dvc_md5(root / f"{relative}.dvc")


def pull(root: Path, dvc_file: Path) -> None:
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with _quiet(), contextlib.chdir(root), Repo(str(root), config=store_config()) as repo:
            repo.pull(targets=[dvc_file.relative_to(root).as_posix()])
    except DvcException as err:
        raise DvcError(f"dvc pull of {dvc_file.name} failed: {err}") from err


def dvc_md5(dvc_file: Path) -> str:
    data = YAML(typ="safe").load(dvc_file.read_text())
    return str(data["outs"][0]["md5"])


def restore_missing(root: Path, folder: str = "data/collected") -> list[str]:
    """Pull every DVC-tracked file under `folder` (the production loop's snapshots) whose data
    is not in the working tree (a fresh checkout, a merged pipeline branch), so specs naming
    it load; the paths restored. One that cannot be pulled is left to the loader, whose
    diagnostic names the file. Without DVC, or with nothing missing, one directory walk."""
    base = root / folder
    if not (root / ".dvc").is_dir() or not base.is_dir():
        return []
    restored = []
    for dvc_file in sorted(base.rglob("*.dvc")):
        target = dvc_file.with_suffix("")
        if not target.exists():
            with contextlib.suppress(DvcError):
                pull(root, dvc_file)
                restored.append(target.relative_to(root).as_posix())
    return restored
