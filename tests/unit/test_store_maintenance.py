"""The S3 store's upkeep against moto's server on 127.0.0.1: `llmops doctor`'s store check
(round trip; missing bucket, missing credentials, unreachable endpoint each named), store gc
(unreferenced objects listed and removed, referenced ones never), and a blob fetch cut short
(the process killed) resumed from the bytes it had, verified by sha256."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.observe.doctor import probe_store
from controller.state.artifacts.base import blob_key
from controller.state.artifacts.gc import find_garbage, remove
from controller.state.artifacts.pod import INPUTS
from controller.state.artifacts.s3 import PART, S3Store
from controller.state.artifacts.serving import publish
from controller.state.artifacts.tree import push_folder
from controller.state.artifacts.url import open_store
from controller.state.blobs import BlobStore
from tests.conftest import PROJECT_ROOT
from tests.servers import moto_s3

BUCKET = "llmops-upkeep"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_s3() as url:
        yield url


SETTINGS = {
    "AWS_ACCESS_KEY_ID": "upkeep",
    "AWS_SECRET_ACCESS_KEY": "upkeep",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture
def s3(endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> S3Store:
    for name, value in SETTINGS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    url = f"s3://{BUCKET}/{request.node.name[:40]}"
    monkeypatch.setenv("LLMOPS_STORE", url)
    store = open_store(url)
    assert isinstance(store, S3Store)
    from botocore.exceptions import ClientError

    with contextlib.suppress(ClientError):
        store.client.create_bucket(Bucket=BUCKET)
    return store


def test_doctor_checks_the_store_and_names_each_failure(
    s3: S3Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ok = probe_store()
    assert ok.status == "ok" and "write, read, delete ok" in ok.detail
    assert list(s3.list("doctor/")) == []  # the probe left nothing behind

    monkeypatch.setenv("LLMOPS_STORE", "s3://no-such-bucket-here/x")
    missing = probe_store()
    assert missing.status == "missing"
    assert "bucket 'no-such-bucket-here'" in missing.detail and "does not exist" in missing.detail
    assert "LLMOPS_STORE" in missing.fix

    monkeypatch.setenv("LLMOPS_STORE", f"s3://{BUCKET}/x")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    no_keys = probe_store()
    assert no_keys.status == "missing" and "no credentials" in no_keys.detail

    for name, value in SETTINGS.items():
        monkeypatch.setenv(name, value)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    started = time.monotonic()
    down = probe_store()
    assert down.status == "missing" and "cannot reach" in down.detail
    assert f"127.0.0.1:{closed}" in down.detail
    assert time.monotonic() - started < 30  # one quick attempt, not five slow ones

    monkeypatch.delenv("LLMOPS_STORE")
    assert probe_store().status == "ok"  # no store: nothing to check


def test_gc_removes_what_nothing_references_and_keeps_the_rest(s3: S3Store, tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs", s3)

    def blob(text: str) -> str:
        return blobs.put_bytes(text.encode()).sha256

    registered, orphan, staged = blob("weights"), blob("left over"), blob("pod input")
    publish(s3, "m@1", [("model.bin", registered, len(b"weights"))])
    publish(s3, "gone@3", [("model.bin", orphan, len(b"left over"))])
    # a run folder pushed with a checkpoint the trainer later deleted, pushed again
    state = tmp_path / "state"
    run = state / "runs/exp/default/abc"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2/w.bin").write_bytes(b"old")
    (run / "log.jsonl").write_text("{}\n")
    push_folder(s3, state, run)
    (run / "checkpoint-2/w.bin").unlink()
    (run / "checkpoint-4").mkdir()
    (run / "checkpoint-4/w.bin").write_bytes(b"new")
    push_folder(s3, state, run)
    (tmp_path / INPUTS).write_text(f'{{"files": {{"data/train.jsonl": "{staged}"}}}}')
    s3.upload(f"state/runs/exp/default/abc/{INPUTS}", tmp_path / INPUTS)

    young = find_garbage(s3, {registered}, {"m@1"}, grace_s=3600)
    assert young.garbage == [] and young.kept_young == 3  # all just written: kept

    found = find_garbage(s3, {registered}, {"m@1"}, grace_s=0)
    assert sorted(key for key, _ in found.garbage) == sorted(
        [
            blob_key(orphan),
            "serve/gone/3/model.bin",
            "state/runs/exp/default/abc/checkpoint-2/w.bin",
        ]
    )
    before = dict(s3.list(""))
    remove(s3, found)
    after = dict(s3.list(""))
    assert set(before) - set(after) == {key for key, _ in found.garbage}
    for kept in (
        blob_key(registered),
        blob_key(staged),
        "serve/m/1/model.bin",
        "state/runs/exp/default/abc/checkpoint-4/w.bin",
        "state/runs/exp/default/abc/log.jsonl",
        f"state/runs/exp/default/abc/{INPUTS}",
    ):
        assert kept in after, kept
    assert find_garbage(s3, {registered}, {"m@1"}, grace_s=0).garbage == []


FETCH = """
import sys
from pathlib import Path
from controller.state.artifacts import s3
from controller.state.artifacts.url import open_store
from controller.state.blobs import BlobStore
s3.THREADS = 1  # two parts in flight at a time, so that the cut lands mid-way
store = open_store(sys.argv[1])
BlobStore(Path(sys.argv[2]), store).local(sys.argv[3])
"""


def test_a_fetch_cut_short_resumes_from_its_bytes_and_is_verified(
    s3: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(6 * PART + 123)
    sha = hashlib.sha256(data).hexdigest()
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    s3.upload(blob_key(sha), source, sha256=sha)
    cache = tmp_path / "cache"
    partial = cache / "tmp" / f"{sha}.partial"

    # A fetch in another process, killed once part of the blob is on disk.
    fetch = subprocess.Popen(
        [sys.executable, "-c", FETCH, s3.url, str(cache), sha],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and fetch.poll() is None:
        if partial.is_file() and partial.stat().st_size >= 2 * PART:
            fetch.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    fetch.wait(timeout=30)
    assert fetch.returncode == -signal.SIGKILL, "the fetch finished before it could be cut"
    had = partial.stat().st_size
    assert 2 * PART <= had < len(data)

    blobs = BlobStore(cache, s3)
    path = blobs.local(sha)
    assert path.read_bytes() == data
    assert s3.counters.bytes_down == len(data) - had  # only the rest was fetched
    assert not partial.exists()

    # A partial whose bytes are not the blob's: dropped, the blob fetched whole.
    other = BlobStore(tmp_path / "cache2", s3)
    bad = tmp_path / "cache2" / "tmp" / f"{sha}.partial"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"x" * PART)
    s3.counters.bytes_down = 0
    assert other.local(sha).read_bytes() == data
    assert s3.counters.bytes_down == len(data)


def test_models_gc_lists_then_removes_the_stores_garbage(
    s3: S3Store, tmp_path: Path, make_repo: Callable[..., Path], run_cli: Callable[..., Any]
) -> None:
    """`llmops models gc --dry-run` lists the store's unreferenced objects and keeps them;
    without --dry-run they go (an empty registry references nothing)."""
    repo = make_repo()
    orphan = BlobStore(tmp_path / "elsewhere", s3).put_bytes(b"nobody's").sha256
    env = {"LLMOPS_STATE_DIR": str(tmp_path / "state")}
    listed = run_cli("models", "gc", "--dry-run", "--grace", "0", "--json", cwd=repo, env=env)
    assert listed.returncode == 0, listed.stderr
    report = json.loads(listed.stdout)["store"]
    assert report["removed"] == [blob_key(orphan)] and report["freed_bytes"] == len(b"nobody's")
    assert s3.size(blob_key(orphan)) is not None  # a dry run removes nothing
    done = run_cli("models", "gc", "--grace", "0", cwd=repo, env=env)
    assert done.returncode == 0, done.stderr
    assert "1 unreferenced object(s); freed" in done.stdout
    assert s3.size(blob_key(orphan)) is None


def test_a_pod_refuses_input_paths_that_leave_its_state_folder(tmp_path: Path) -> None:
    from controller.state.artifacts.base import StoreError
    from controller.state.artifacts.pod import inside

    assert inside(tmp_path, "runs/a/job.json") == (tmp_path / "runs/a/job.json").resolve()
    for hostile in ("../outside.json", "runs/../../etc/passwd", "/etc/passwd"):
        with pytest.raises(StoreError, match="outside the pod's state folder"):
            inside(tmp_path, hostile)
