"""State, store garbage: the objects of the artifact store that nothing references, for
`llmops models gc` (listed with --dry-run, else deleted).

Referenced, so never garbage: a blob a registered version, an arena answer or a scan names
(Registry.referenced_blobs), or a staged cluster job's inputs record names
(pod-inputs.json); a served version's folder (serve/<model>/<N>/) while that version is
registered; a file of a result folder (run folders, checkpoints, evaluation results under
state/) that the folder's manifest lists, and the staged job files. Garbage: blobs nothing
names, folders of removed versions, and files a folder's manifest no longer lists
(checkpoints the trainer deleted after a push). DVC's folder (dvc/) is DVC's and is left
alone. Nothing written in the last `grace_s` seconds is garbage: a writer stores first and
registers (or writes the manifest) after.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from controller.state.artifacts.base import BLOB_PREFIX, STATE_PREFIX, ArtifactStore
from controller.state.artifacts.pod import INPUTS
from controller.state.artifacts.serving import SERVE_PREFIX
from controller.state.artifacts.tree import MANIFEST

STAGED = ("job.json", INPUTS)  # written before the pod's first push lists them


@dataclass
class StoreGc:
    garbage: list[tuple[str, int]] = field(default_factory=list)  # (key, size)
    kept_young: int = 0

    @property
    def size(self) -> int:
        return sum(size for _, size in self.garbage)


def _read_json(store: ArtifactStore, key: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        store.download(key, Path(tmp) / "f.json")
        return dict(json.loads((Path(tmp) / "f.json").read_text()))


def find_garbage(
    store: ArtifactStore, blobs: set[str], versions: set[str], grace_s: float
) -> StoreGc:
    """What in the store nothing references. `blobs`: the sha256s the registry references;
    `versions`: the registered versions, `model@N`."""
    report = StoreGc()
    state = list(store.list_aged(f"{STATE_PREFIX}/"))
    pinned = set(blobs)
    listed: dict[str, set[str]] = {}  # a result folder's prefix -> the files its manifest lists
    for key, _, _ in state:
        folder, _, name = key.rpartition("/")
        if name == INPUTS:
            files = _read_json(store, key).get("files") or {}
            pinned |= set(dict(files).values())  # type: ignore[call-overload]
        elif name == MANIFEST:
            files = _read_json(store, key).get("files") or {}
            listed[folder] = set(dict(files))  # type: ignore[call-overload]

    def consider(key: str, size: int, age: float, referenced: bool) -> None:
        if referenced:
            return
        if age < grace_s:
            report.kept_young += 1
        else:
            report.garbage.append((key, size))

    for key, size, age in store.list_aged(f"{BLOB_PREFIX}/"):
        consider(key, size, age, key.rsplit("/", 1)[-1] in pinned)
    for key, size, age in store.list_aged(f"{SERVE_PREFIX}/"):
        parts = key.split("/")
        consider(key, size, age, len(parts) > 3 and f"{parts[1]}@{parts[2]}" in versions)
    for key, size, age in state:
        name = key.rsplit("/", 1)[-1]
        if name in (MANIFEST, *STAGED):
            continue
        owner = max((f for f in listed if key.startswith(f"{f}/")), key=len, default=None)
        if owner is None:
            continue  # in no result folder: a push still under way writes its manifest last
        consider(key, size, age, key.removeprefix(f"{owner}/") in listed[owner])
    return report


def remove(store: ArtifactStore, report: StoreGc) -> None:
    for key, _ in report.garbage:
        store.delete(key)
