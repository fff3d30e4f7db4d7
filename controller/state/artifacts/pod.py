"""State, a cluster job's pod over the store: fetch the job and its inputs, run the runner,
push its results back (no shared volume).

    python -m controller.state.artifacts.pod runs/<experiment>/<run>/<digest>/job.json -- \
        python -m runners.train {job}

The controller (controller/apply/store_job.py) put `job.json` (paths relative to the state
folder) and `pod-inputs.json` (which job fields are paths, every input file by sha256, the
output folder) beside it in the store. Here, in LLMOPS_STATE_DIR (the pod's scratch folder):
the input files are fetched as verified blobs, the output folder's checkpoints from an
earlier attempt are pulled, the command runs with `{job}` naming the job with local paths,
the output folder is pushed every LLMOPS_STORE_PUSH_S seconds and at the end, and a finished
model's files are stored as blobs, which the controller's registration then finds stored.
On a multi-node job only node 0 (PET_NODE_RANK) pushes, as only rank 0 writes the run folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from controller.state.artifacts.base import STATE_PREFIX, ArtifactStore, StoreError, blob_key
from controller.state.artifacts.tree import pull_folder, push_folder
from controller.state.artifacts.url import open_store
from controller.state.paths import STATE_DIR_ENV, STORE_ENV

INPUTS = "pod-inputs.json"
LOCAL_JOB = ".pod/job.json"  # the job with local paths, outside the folders it pushes
PUSH_ENV = "LLMOPS_STORE_PUSH_S"
PUSH_EVERY_S = 300.0
JOB_PLACEHOLDER = "{job}"


def inside(root: Path, relative: str) -> Path:
    """`root / relative`, refused when the path (read from the store) would leave `root`."""
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise StoreError(
            f"{INPUTS} names {relative!r}, outside the pod's state folder; the controller "
            "writes only paths inside it: stage the job again with 'llmops apply'"
        )
    return target


def fetch_file(store: ArtifactStore, root: Path, relative: str, sha256: str) -> bool:
    """One input file into the state folder from its blob, verified; False when here already."""
    target = inside(root, relative)
    if target.is_file():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    try:
        store.download(blob_key(sha256), tmp, sha256=sha256)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def prepare(store: ArtifactStore, root: Path, job_key: str) -> tuple[Path, dict[str, Any]]:
    """The job and its inputs fetched into `root`; (the local job file, the inputs record)."""
    job_dir = inside(root, job_key).parent
    job_dir.mkdir(parents=True, exist_ok=True)
    for name in (Path(job_key).name, INPUTS):
        key = f"{STATE_PREFIX}/{Path(job_key).parent.as_posix()}/{name}"
        if store.size(key) is None:
            raise StoreError(
                f"{store.url}/{key} is not in the store: the controller stages it before it "
                "submits the job; submit the run again with 'llmops apply'"
            )
        store.download(key, job_dir / name)
    inputs: dict[str, Any] = json.loads((job_dir / INPUTS).read_text())
    for relative, sha in sorted(inputs["files"].items()):
        fetch_file(store, root, relative, sha)
    pull_folder(store, root, inside(root, inputs["output"]))
    job = json.loads((root / job_key).read_text())
    for field in inputs["paths"]:
        value = job.get(field)
        if isinstance(value, dict):  # name -> path (an evaluation's task data)
            job[field] = {name: str(inside(root, path)) for name, path in value.items()}
        elif value:
            job[field] = str(inside(root, value))
    local = root / LOCAL_JOB
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(json.dumps(job, indent=2))
    return local, inputs


def store_model_blobs(store: ArtifactStore, folder: Path) -> int:
    """Every file of a finished model folder stored as its blob (the ones the store lacks)."""
    sent = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with path.open("rb") as reader:
            sha = hashlib.file_digest(reader, "sha256").hexdigest()
        if store.size(blob_key(sha)) != path.stat().st_size:
            store.upload(blob_key(sha), path, sha256=sha)
            sent += 1
    return sent


def _pusher(store: ArtifactStore, root: Path, output: Path, stop: threading.Event) -> None:
    every = float(os.environ.get(PUSH_ENV) or PUSH_EVERY_S)
    while not stop.wait(every):
        try:
            push_folder(store, root, output)
        except StoreError as err:  # the next push or the final one tries again
            print(f"llmops pod: pushing {output.name} failed: {err}", file=sys.stderr)


def run(job_key: str, command: list[str]) -> int:
    """Fetch, run `command` (its `{job}` the local job file), push; the command's exit code."""
    store = open_store(os.environ.get(STORE_ENV))
    if store is None:
        raise StoreError(
            f"{STORE_ENV} is not set in the pod: the Secret llmops-store must hold it "
            "(kubectl create secret generic llmops-store --from-literal=LLMOPS_STORE=s3://...)"
        )
    root = Path(os.environ.get(STATE_DIR_ENV) or "/llmops")
    local, inputs = prepare(store, root, job_key)
    output = root / inputs["output"]
    writes = os.environ.get("PET_NODE_RANK", "0") == "0"
    process = subprocess.Popen([str(local) if a == JOB_PLACEHOLDER else a for a in command])
    # Kubernetes stops a pod with SIGTERM: the runner gets it too (it checkpoints and exits).
    signal.signal(signal.SIGTERM, lambda *_: process.send_signal(signal.SIGTERM))
    stop = threading.Event()
    pusher = threading.Thread(target=_pusher, args=(store, root, output, stop), daemon=True)
    if writes:
        pusher.start()
    try:
        code = process.wait()
    finally:
        stop.set()
        if writes:
            pusher.join()
    if writes:
        push_folder(store, root, output)
        model = root / inputs["model"] if inputs.get("model") else None
        if code == 0 and model is not None and model.is_dir():
            store_model_blobs(store, model)
    return code


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(
            "usage: python -m controller.state.artifacts.pod JOB_KEY -- COMMAND... "
            "({job} in COMMAND names the job file)",
            file=sys.stderr,
        )
        return 2
    try:
        return run(argv[0], argv[2:])
    except StoreError as err:
        print(f"llmops pod: {err}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
