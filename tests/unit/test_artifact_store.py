"""The artifact store: S3 (moto's server on 127.0.0.1) and folder stores, the blob cache over
them (fetch once, verify, evict), result folders, the DVC remote and the errors."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.state.artifacts.base import ArtifactStore, StoreError, blob_key, parse_size
from controller.state.artifacts.local import FolderStore
from controller.state.artifacts.s3 import PART, S3Store
from controller.state.artifacts.tree import MANIFEST, pull_folder, push_folder
from controller.state.artifacts.url import open_store
from controller.state.blobs import BlobStore
from tests.servers import moto_s3

BUCKET = "llmops-unit"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_s3() as url:
        yield url


@pytest.fixture
def s3(endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> S3Store:
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "unit",
        "AWS_SECRET_ACCESS_KEY": "unit",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    store = open_store(f"s3://{BUCKET}/{request.node.name[:40]}")
    assert isinstance(store, S3Store)
    from botocore.exceptions import ClientError

    with contextlib.suppress(ClientError):  # made by an earlier test
        store.client.create_bucket(Bucket=BUCKET)
    return store


@pytest.fixture(params=["s3", "folder"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "s3":
        return request.getfixturevalue("s3")
    return FolderStore(tmp_path / "shared")


def blob_file(tmp_path: Path, size: int, name: str = "f.bin") -> tuple[Path, str]:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("size", [0, 1000, PART * 2 + 17])
def test_round_trip_single_and_multipart(store: ArtifactStore, tmp_path: Path, size: int) -> None:
    path, sha = blob_file(tmp_path, size)
    store.upload(blob_key(sha), path, sha256=sha)
    assert store.size(blob_key(sha)) == size
    assert (blob_key(sha), size) in list(store.list("blobs/"))
    assert store.download(blob_key(sha), tmp_path / "back", sha256=sha) == size
    assert (tmp_path / "back").read_bytes() == path.read_bytes()
    assert store.size("blobs/sha256/00/none") is None


def test_a_multipart_upload_keeps_its_sha256_and_a_missing_bucket_is_named(
    s3: S3Store, tmp_path: Path
) -> None:
    path, sha = blob_file(tmp_path, PART + 1)  # over one part: boto3's managed transfer
    s3.upload(blob_key(sha), path, sha256=sha)
    head = s3.client.head_object(Bucket=BUCKET, Key=s3._key(blob_key(sha)))
    assert head["Metadata"] == {"sha256": sha}
    assert head["ContentLength"] == PART + 1
    gone = S3Store(f"s3://no-such-bucket-{sha[:8]}/x")
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-.*' .* does not exist; create it"):
        gone.upload(blob_key(sha), path, sha256=sha)
    # boto3's managed transfer wraps the request's error; it is judged like any other
    upload = lambda: gone.client.upload_file(str(path), gone.bucket, "x/y")  # noqa: E731
    with pytest.raises(StoreError, match="does not exist; create it"):
        gone._call("uploading y", upload)


def test_damaged_object_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    _, sha = blob_file(tmp_path, 5000)
    other, _ = blob_file(tmp_path, 5000, "other.bin")
    store.upload(blob_key(sha), other)  # bytes that are not the blob's
    with pytest.raises(StoreError, match="hashes to sha256:.*damaged"):
        store.download(blob_key(sha), tmp_path / "back", sha256=sha)
    assert not (tmp_path / "back").exists()


def test_interrupted_multipart_upload_is_resumed(s3: S3Store, tmp_path: Path) -> None:
    path, sha = blob_file(tmp_path, PART * 3)
    key = s3._key(blob_key(sha))
    started = s3.client.create_multipart_upload(Bucket=BUCKET, Key=key)
    data = path.read_bytes()
    for number in (1, 2):  # a run cut off after two of three parts
        s3.client.upload_part(
            Bucket=BUCKET,
            Key=key,
            UploadId=started["UploadId"],
            PartNumber=number,
            Body=data[(number - 1) * PART : number * PART],
        )
    s3.upload(blob_key(sha), path, sha256=sha)
    assert s3.counters.parts_reused == 2
    s3.download(blob_key(sha), tmp_path / "back", sha256=sha)
    assert (tmp_path / "back").read_bytes() == data


def test_blob_cache_fetches_once_and_verifies(s3: S3Store, tmp_path: Path) -> None:
    path, sha = blob_file(tmp_path, PART + 5)
    writer = BlobStore(tmp_path / "a", s3)
    blob = writer.put(path)
    assert s3.size(blob_key(sha)) == blob.size
    reader = BlobStore(tmp_path / "b", s3)
    assert reader.exists(sha, blob.size) and reader.fetched == []  # asked, not fetched
    assert reader.check(sha, blob.size) is None
    assert reader.check(sha, blob.size) is None
    assert reader.local(sha).read_bytes() == path.read_bytes()
    assert reader.fetched == [blob]
    assert len((tmp_path / "b/fetched.jsonl").read_text().splitlines()) == 1
    assert not BlobStore(tmp_path / "c").exists(sha)  # no store: the folder alone


def test_cache_limit_evicts_least_recently_used(s3: S3Store, tmp_path: Path) -> None:
    cache = BlobStore(tmp_path / "cache", s3, cache_max=25_000)
    shas = [cache.put(blob_file(tmp_path, 10_000, f"{i}.bin")[0]).sha256 for i in range(2)]
    old = time.time() - 3600
    for age, sha in enumerate(shas):  # both idle; the first used longest ago
        os.utime(cache.path(sha), (old - 100 * (1 - age), old))
    third = cache.put(blob_file(tmp_path, 10_000, "2.bin")[0]).sha256
    assert not cache.path(shas[0]).exists()  # evicted: the least recently used
    assert cache.path(shas[1]).exists() and cache.path(third).exists()
    assert cache.check(shas[0]) is None and cache.path(shas[0]).exists()  # fetched back


def test_result_folder_travels_by_manifest(store: ArtifactStore, tmp_path: Path) -> None:
    state = tmp_path / "state-a"
    run = state / "runs/exp/default/abc"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2/adapter.bin").write_bytes(b"w" * 100)
    (run / "train.log").write_text("step 1\n")
    assert push_folder(store, state, run) == 2
    # a file a later, cut-off push sent without its manifest is not taken
    (run / "checkpoint-4").mkdir()
    (run / "checkpoint-4/adapter.bin").write_bytes(b"x")
    store.upload(
        "state/runs/exp/default/abc/checkpoint-4/adapter.bin", run / "checkpoint-4/adapter.bin"
    )
    other = tmp_path / "state-b"
    target = other / "runs/exp/default/abc"
    assert pull_folder(store, other, target) == 2
    assert (target / "checkpoint-2/adapter.bin").read_bytes() == b"w" * 100
    assert not (target / "checkpoint-4").exists() and not (target / MANIFEST).exists()
    (target / "train.log").write_text("newer here\n")
    assert pull_folder(store, other, target) == 0  # a file here is never replaced
    assert (target / "train.log").read_text() == "newer here\n"
    assert pull_folder(None, other, target) == 0 and push_folder(None, state, run) == 0


def test_dvc_remote_is_the_stores_folder(s3: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.state.dvc import STORE_REMOTE, store_config

    monkeypatch.delenv("LLMOPS_STORE", raising=False)
    assert store_config() is None
    monkeypatch.setenv("LLMOPS_STORE", s3.url)
    config = store_config()
    assert config is not None and config["core"]["remote"] == STORE_REMOTE
    assert config["remote"][STORE_REMOTE] == {
        "url": f"{s3.url}/dvc",
        "endpointurl": os.environ["AWS_ENDPOINT_URL"],
    }


def test_errors_name_the_setting_and_the_fix(s3: S3Store) -> None:
    with pytest.raises(StoreError, match="LLMOPS_STORE='ftp://x'.*s3://bucket/prefix"):
        open_store("ftp://x")
    missing = S3Store("s3://no-such-bucket-here/p")
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-here'.*does not exist"):
        list(missing.list("blobs/"))
    assert parse_size("20G") == 20 << 30 and parse_size("512") == 512
    with pytest.raises(StoreError, match="LLMOPS_STORE_CACHE_MAX='lots'"):
        parse_size("lots")
