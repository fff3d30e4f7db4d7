"""Apply, cluster jobs over the artifact store: stage a job's file and inputs in the store
before a Job or TrainJob is submitted, and pull its results back after it ends.

With LLMOPS_STORE an s3:// URL, a pod mounts no volume claim: its entry
(controller/state/artifacts/pod.py) fetches what is staged here and pushes the run folder and
the model's blobs back. The job names state paths relative to the state folder, so the pod
resolves them in its own scratch folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from controller.state.artifacts.base import STATE_PREFIX, ArtifactStore, blob_key
from controller.state.artifacts.pod import INPUTS
from controller.state.artifacts.tree import ALWAYS_SENT, MANIFEST, folder_key, pull_folder
from controller.state.paths import STORE_ENV
from runners.errors import LlmopsError


class StagingFailed(LlmopsError):
    """A job's input lies outside the state folder, so a pod could not find it in the store."""


def store_backed() -> bool:
    """Cluster jobs go through the store: LLMOPS_STORE names an S3 store (a folder store is
    a mount, which a pod would need as a volume anyway)."""
    return os.environ.get(STORE_ENV, "").startswith("s3://")


def _relative(path: str, state_root: Path, field: str) -> str:
    # The folder resolved, not the file: a model's files are links into the blob store.
    where = Path(path).parent.resolve() / Path(path).name
    try:
        return where.relative_to(state_root.resolve()).as_posix()
    except ValueError:
        raise StagingFailed(
            f"the job's {field} {path} is outside the state folder {state_root}; a cluster job "
            "over the store reads only the state folder's files"
        ) from None


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file())


def _sha256(path: Path) -> str:
    """A blob's name when `path` links into the blob store, else its content's hash."""
    real = path.resolve()
    if real.parent.parent.name == "sha256" and len(real.name) == 64:
        return real.name  # a blob's file name is its sha256 (BlobStore.path)
    with real.open("rb") as reader:
        return hashlib.file_digest(reader, "sha256").hexdigest()


def stage(
    store: ArtifactStore,
    state_root: Path,
    job_file: Path,
    fields: dict[str, Any],
    paths: tuple[str, ...],
    inputs: tuple[str, ...],
    output: str,
    model: str | None = None,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Write `job_file` (the job's `paths` fields relative to the state folder; a field may
    map names to paths) and its inputs record beside it, upload both and every input file
    the store lacks as a blob, and drop an earlier attempt's result.json from the store.
    `extra`: folders the pod needs that no field names (an adapter's base model). The job's
    fields as written."""
    job = dict(fields)
    files: dict[str, str] = {}

    def send(path: str, field: str) -> None:
        for each in _files(Path(path)):
            relative = _relative(str(each), state_root, field)
            sha = files[relative] = _sha256(each)
            if store.size(blob_key(sha)) != each.stat().st_size:
                store.upload(blob_key(sha), each.resolve(), sha256=sha)

    for field in paths:
        value = job.get(field)
        if not value:
            continue
        named: dict[str, str] = value if isinstance(value, dict) else {field: value}
        where = {name: field if name == field else f"{field} {name}" for name in named}
        if field in inputs:
            for name, path in named.items():
                send(path, where[name])
        relative = {name: _relative(path, state_root, where[name]) for name, path in named.items()}
        job[field] = relative if isinstance(value, dict) else relative[field]
    for folder in extra:
        send(folder, "input")
    record = {
        "paths": list(paths),
        "files": files,
        "output": _relative(output, state_root, "output"),
        "model": _relative(model, state_root, "model") if model else None,
    }
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps(job, indent=2, sort_keys=True))
    prefix = f"{STATE_PREFIX}/{_relative(str(job_file.parent), state_root, 'job file')}"
    store.upload(f"{prefix}/{job_file.name}", job_file)
    with tempfile.TemporaryDirectory() as tmp:
        written = Path(tmp) / INPUTS
        written.write_text(json.dumps(record, indent=2, sort_keys=True))
        store.upload(f"{prefix}/{INPUTS}", written)
    store.delete(f"{folder_key(state_root, Path(output))}/result.json")
    return job


def collect(store: ArtifactStore, state_root: Path, output: Path) -> int:
    """The output folder the pod pushed, fetched into the state folder; files fetched. The
    pod's files are newer than any here (a log or result an earlier attempt left): a listed
    file here that is small (rewritten in place) or of another size is replaced."""
    prefix = folder_key(state_root, output)
    if store.size(f"{prefix}/{MANIFEST}") is not None:
        with tempfile.TemporaryDirectory() as tmp:
            store.download(f"{prefix}/{MANIFEST}", Path(tmp) / MANIFEST)
            listed: dict[str, int] = json.loads((Path(tmp) / MANIFEST).read_text())["files"]
        for relative, size in listed.items():
            here = output / relative
            if here.is_file() and (size <= ALWAYS_SENT or here.stat().st_size != size):
                here.unlink()
    return pull_folder(store, state_root, output)
