"""State, artifact store on S3 (any S3-compatible service): parallel multipart, sha256-checked."""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from controller.state.artifacts.base import ArtifactStore, StoreError

# boto3's TransferConfig defaults, so a copy through llmops moves bytes as `aws s3 cp` does
PART = 8 << 20
THREADS = 10
TRANSFER = TransferConfig(
    multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=THREADS
)
T = TypeVar("T")


class S3Store(ArtifactStore):
    """Objects under s3://bucket/prefix/; endpoint, region and credentials the usual AWS way."""

    def __init__(self, url: str, quick: bool = False) -> None:
        """`quick`: short timeouts and one attempt (a check such as `llmops doctor`)."""
        super().__init__()
        parsed = urlparse(url)
        if not parsed.netloc:
            raise StoreError(f"LLMOPS_STORE={url!r} names no bucket: use s3://bucket/prefix")
        self.url = url.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.client: Any = boto3.session.Session().client(
            "s3",
            config=Config(
                max_pool_connections=THREADS * 2,
                retries={"max_attempts": 1 if quick else 5, "mode": "standard"},
                connect_timeout=5 if quick else 60,
                read_timeout=10 if quick else 60,
            ),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, call: Callable[[], T]) -> T:
        """One request, its failure as a StoreError naming the store and the fix."""
        try:
            try:
                return call()
            except S3UploadFailedError as err:
                # boto3's managed upload wraps the request's error: judge that one
                if isinstance(err.__context__, ClientError | BotoCoreError):
                    raise err.__context__ from err
                raise StoreError(f"{what}: {self.url} refused the upload ({err})") from err
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                raise StoreError(
                    f"{what}: bucket {self.bucket!r} of LLMOPS_STORE={self.url} does not exist; "
                    f"create it (aws s3 mb s3://{self.bucket}) or fix the URL"
                ) from err
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StoreError(
                    f"{what}: {self.url} refused the credentials ({code}); check "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the profile) for this bucket"
                ) from err
            raise StoreError(f"{what}: {self.url} answered {code or err}") from err
        except NoCredentialsError as err:
            raise StoreError(
                f"{what}: no credentials for {self.url}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or a role) for this bucket"
            ) from err
        except BotoCoreError as err:
            endpoint = os.environ.get("AWS_ENDPOINT_URL", "AWS's default endpoint")
            raise StoreError(
                f"{what}: cannot reach {self.url} at {endpoint} ({err}); check AWS_ENDPOINT_URL, "
                "the credentials and the network"
            ) from err

    def size(self, key: str) -> int | None:
        def head() -> int | None:
            try:
                answer = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
            return int(answer["ContentLength"])

        return self._call(f"looking up {key}", head)

    def upload(self, key: str, source: Path, sha256: str | None = None) -> None:
        size = source.stat().st_size
        meta = {"sha256": sha256} if sha256 else {}
        full = self._key(key)
        # Only a multipart upload can have been left half done by an earlier, killed call.
        upload_id, done = self._unfinished(full) if size > PART else (None, {})
        if upload_id is None:
            # boto3's managed transfer (s3transfer) with our part size: one PUT up to PART,
            # parts streamed from the file above it (15-20% faster here than parts read into
            # memory). Killed half way, it leaves parts of PART bytes that the next call resumes.
            self._call(
                f"uploading {key}",
                lambda: self.client.upload_file(
                    str(source), self.bucket, full, ExtraArgs={"Metadata": meta}, Config=TRANSFER
                ),
            )
        else:
            self._multipart(full, key, source, size, meta, upload_id, done)
        self.counters.uploads += 1
        self.counters.bytes_up += size

    def _multipart(
        self,
        full: str,
        key: str,
        source: Path,
        size: int,
        meta: dict[str, str],
        upload_id: str,
        done: dict[int, tuple[str, int]],
    ) -> None:
        """The upload an earlier, interrupted call began, resumed: its parts whose size and MD5
        (the ETag S3 gives a part) match are not sent again; the rest in parallel."""
        ranges = [(n + 1, off, min(PART, size - off)) for n, off in enumerate(range(0, size, PART))]
        fd = os.open(source, os.O_RDONLY)

        def send(part: tuple[int, int, int]) -> dict[str, Any]:
            number, offset, length = part
            data = os.pread(fd, length, offset)
            known = done.get(number)
            if known and known[1] == length and known[0] == hashlib.md5(data).hexdigest():
                self.counters.parts_reused += 1
                return {"PartNumber": number, "ETag": f'"{known[0]}"'}
            answer = self.client.upload_part(
                Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=data
            )
            return {"PartNumber": number, "ETag": answer["ETag"]}

        try:
            with ThreadPoolExecutor(THREADS) as pool:
                parts = self._call(f"uploading {key}", lambda: list(pool.map(send, ranges)))
        finally:
            os.close(fd)
        self._call(
            f"finishing the upload of {key}",
            lambda: self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
            ),
        )

    def _unfinished(self, full: str) -> tuple[str | None, dict[int, tuple[str, int]]]:
        """The newest unfinished multipart upload of `full` and its parts (number -> md5, size)."""
        listed = self._call(
            f"listing unfinished uploads of {full}",
            lambda: self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=full),
        )
        mine = [u for u in listed.get("Uploads", []) if u["Key"] == full]
        if not mine:
            return None, {}
        upload_id = max(mine, key=lambda u: u["Initiated"])["UploadId"]
        done: dict[int, tuple[str, int]] = {}
        pages = self.client.get_paginator("list_parts").paginate(
            Bucket=self.bucket, Key=full, UploadId=upload_id
        )
        for page in self._call(f"listing parts of {full}", lambda: list(pages)):
            for part in page.get("Parts", []):
                done[part["PartNumber"]] = (part["ETag"].strip('"'), part["Size"])
        return upload_id, done

    def download(
        self,
        key: str,
        target: Path,
        sha256: str | None = None,
        size: int | None = None,
        resume: bool = False,
    ) -> int:
        """Ranged GETs in parallel, written and hashed in order as they arrive; with `resume`,
        from the end of what `target` holds already (its bytes hashed first)."""
        if size is None:
            size = self.size(key)
        if size is None:
            raise StoreError(f"{self.url}/{key} is not in the store")
        full = self._key(key)
        digest = hashlib.sha256()
        start = 0
        if resume and target.is_file() and target.stat().st_size <= size:
            with target.open("rb") as had:
                while chunk := had.read(PART):
                    digest.update(chunk)
                    start += len(chunk)

        def get(offset: int) -> bytes:
            end = min(offset + PART, size) - 1
            answer = self.client.get_object(
                Bucket=self.bucket, Key=full, Range=f"bytes={offset}-{end}"
            )
            return bytes(answer["Body"].read())

        offsets = iter(range(start, size, PART))
        window: deque[Future[bytes]] = deque()
        # one hashing thread (FIFO: the parts in order) beside the writer, both off the GIL
        with (
            ThreadPoolExecutor(THREADS) as pool,
            ThreadPoolExecutor(1) as hasher,
            target.open("ab" if start else "wb") as writer,
        ):
            for offset in offsets:
                window.append(pool.submit(get, offset))
                if len(window) >= THREADS * 2:
                    break
            while window:
                data = self._call(f"downloading {key}", window.popleft().result)
                hasher.submit(digest.update, data)
                writer.write(data)
                offset = next(offsets, None)
                if offset is not None:
                    window.append(pool.submit(get, offset))
        if sha256 is not None and digest.hexdigest() != sha256:
            target.unlink(missing_ok=True)
            raise StoreError(
                f"{self.url}/{key} hashes to sha256:{digest.hexdigest()[:12]}, not its name: the "
                "stored object is damaged; delete it and store it again from a good copy"
            )
        self.counters.downloads += 1
        self.counters.bytes_down += size - start
        return size - start

    def list_aged(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        start = self._key(prefix)
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=start
        )
        cut = len(self.prefix) + 1 if self.prefix else 0
        now = time.time()
        for page in self._call(f"listing {prefix}", lambda: list(pages)):
            for item in page.get("Contents", []):
                age = now - item["LastModified"].timestamp()
                yield item["Key"][cut:], int(item["Size"]), age

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        start = self._key(prefix)
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=start
        )
        cut = len(self.prefix) + 1 if self.prefix else 0
        for page in self._call(f"listing {prefix}", lambda: list(pages)):
            for item in page.get("Contents", []):
                yield item["Key"][cut:], int(item["Size"])

    def delete(self, key: str) -> None:
        self._call(
            f"deleting {key}",
            lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)),
        )

    def copy(self, source: str, target: str) -> None:
        """A server-side copy (boto3's managed copy: multipart for large objects)."""
        self._call(
            f"copying {source} to {target}",
            lambda: self.client.copy(
                {"Bucket": self.bucket, "Key": self._key(source)}, self.bucket, self._key(target)
            ),
        )

    def dvc_remote(self) -> dict[str, str]:
        """DVC's remote section for the store's dvc/ folder (its S3 options from the env)."""
        remote = {"url": self.sub_url("dvc")}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            remote["endpointurl"] = endpoint
        return remote
