"""State, result folders in the store: run folders, checkpoints and evaluation results by path."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path

from controller.state.artifacts.base import STATE_PREFIX, ArtifactStore

# Files up to this size (logs, JSON results) are sent on every push, since one rewritten in
# place may keep its size; larger ones (weights, optimizer state in checkpoint-<step>/ folders)
# are written once under a new name and are sent when the store lacks them or has another size.
ALWAYS_SENT = 8 << 20
# Written last by a push: a pull takes only the files it lists, so a push cut off half-way
# (a checkpoint folder without its weights) is never fetched as if it were whole.
MANIFEST = ".llmops-folder.json"


def folder_key(state_root: Path, folder: Path) -> str:
    """The store prefix of a folder of the state folder: state/<its path under the root>."""
    return f"{STATE_PREFIX}/{folder.resolve().relative_to(state_root.resolve()).as_posix()}"


def push_folder(store: ArtifactStore | None, state_root: Path, folder: Path) -> int:
    """Upload the folder's files to the store (none without a store); how many were sent."""
    if store is None or not folder.is_dir():
        return 0
    prefix = folder_key(state_root, folder)
    stored = dict(store.list(f"{prefix}/"))
    listed: dict[str, int] = {}
    sent = 0
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.is_symlink() or path.name == MANIFEST:
            continue
        relative = path.relative_to(folder).as_posix()
        size = listed[relative] = path.stat().st_size
        if size <= ALWAYS_SENT or stored.get(f"{prefix}/{relative}") != size:
            store.upload(f"{prefix}/{relative}", path)
            sent += 1
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / MANIFEST
        manifest.write_text(json.dumps({"files": listed}, sort_keys=True))
        store.upload(f"{prefix}/{MANIFEST}", manifest)
    return sent


def pull_folder(store: ArtifactStore | None, state_root: Path, folder: Path) -> int:
    """Download the store's files of the folder that are missing here (a file here is never
    replaced: it is as new as anything pushed); how many were fetched."""
    if store is None:
        return 0
    prefix = folder_key(state_root, folder)
    if store.size(f"{prefix}/{MANIFEST}") is None:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        store.download(f"{prefix}/{MANIFEST}", Path(tmp) / MANIFEST)
        listed: dict[str, int] = json.loads((Path(tmp) / MANIFEST).read_text())["files"]
    stored = dict(store.list(f"{prefix}/"))
    got = 0
    for relative, size in sorted(listed.items()):
        key, target = f"{prefix}/{relative}", folder / relative
        if target.exists() or stored.get(key) != size:
            continue  # here already, or replaced by a push still under way
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}")
        try:
            store.download(key, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        got += 1
    return got
