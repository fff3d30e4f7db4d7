"""Benchmark: the S3 artifact store's blob throughput, and a no-op apply on a second runner.

On moto's S3 server (127.0.0.1, its own process), in one run:
- upload: the same files through llmops (S3Store.upload, parallel multipart) against boto3's
  `upload_file` (its TransferConfig defaults: 8 MiB parts, 10 threads), and the whole
  `BlobStore.put` (hash, copy into the cache, upload) beside them;
- download: the same objects through llmops (S3Store.download: parallel ranged GETs, sha256
  checked) against boto3's `download_file`, and `BlobStore.local` on an empty cache (the same,
  renamed into the cache and logged) beside them;
  each the median of ROUNDS rounds, alternating which goes first; goal >= 0.9x boto3;
- no-op apply: the tiny repository applied on runner A (its own state folder), then
  `llmops apply` with nothing to do timed on A and on runner B (a clone, an empty state folder,
  the same store and registry URLs; the registry is one SQLite file here).
Usage: python benchmarks/store_throughput.py [SIZE_MB] [FILES] [ROUNDS] [--no-apply]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BUCKET = "llmops-bench"
ROOT = Path(__file__).resolve().parents[1]


def start_s3() -> subprocess.Popen:
    """moto's S3 server in its own process, as a real store is: in this process it would
    share the interpreter lock with the clients measured."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise SystemExit("moto's S3 server did not start") from None
            time.sleep(0.2)
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return server


def clock(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def throughput(work: Path, size_mb: int, count: int, rounds: int) -> None:
    import boto3

    from controller.state.artifacts.base import blob_key
    from controller.state.artifacts.s3 import S3Store
    from controller.state.blobs import BlobStore, hash_file

    files = []
    for i in range(count):
        path = work / f"file{i}.bin"
        path.write_bytes(os.urandom(size_mb << 20))
        files.append((path, hash_file(path).sha256))
    total_mb = size_mb * count
    client = boto3.client("s3")
    up = {"llmops store": [], "llmops BlobStore.put": [], "boto3 upload_file": []}
    down = {"llmops store": [], "llmops BlobStore.local": [], "boto3 download_file": []}
    for r in range(rounds):
        store = S3Store(f"s3://{BUCKET}/r{r}")

        def ours(store: S3Store = store) -> None:
            for path, sha in files:
                store.upload(blob_key(sha), path, sha256=sha)

        def put(r: int = r) -> None:
            blobs = BlobStore(work / f"cache-put-{r}", S3Store(f"s3://{BUCKET}/put{r}"))
            for path, _ in files:
                blobs.put(path)

        def theirs(r: int = r) -> None:
            for i, (path, _) in enumerate(files):
                client.upload_file(str(path), BUCKET, f"direct{r}/{i}")

        order = [("llmops store", ours), ("boto3 upload_file", theirs)]
        for name, run in order if r % 2 == 0 else order[::-1]:
            up[name].append(clock(run))
        up["llmops BlobStore.put"].append(clock(put))

        def fetch(r: int = r, store: S3Store = store) -> None:
            blobs = BlobStore(work / f"cache-get-{r}", store)
            for _, sha in files:
                blobs.local(sha)

        def direct(r: int = r) -> None:
            for i in range(len(files)):
                client.download_file(BUCKET, f"direct{r}/{i}", str(work / f"got{r}-{i}"))

        def get(r: int = r, store: S3Store = store) -> None:
            for i, (_, sha) in enumerate(files):
                store.download(blob_key(sha), work / f"got{r}-ours-{i}", sha256=sha)

        order = [("llmops store", get), ("boto3 download_file", direct)]
        for name, run in order if r % 2 == 0 else order[::-1]:
            down[name].append(clock(run))
        down["llmops BlobStore.local"].append(clock(fetch))
        for path in work.glob("got*"):
            path.unlink()
        for folder in work.glob("cache-*"):
            shutil.rmtree(folder, ignore_errors=True)  # chmod 0444 files in writable folders

    print(f"{count} files x {size_mb} MiB, median of {rounds} rounds (moto on 127.0.0.1)")
    for label, table, base in (
        ("upload", up, "boto3 upload_file"),
        ("download", down, "boto3 download_file"),
    ):
        base_rate = total_mb / statistics.median(table[base])
        for name, times in table.items():
            rate = total_mb / statistics.median(times)
            print(f"  {label:8} {name:24} {rate:8.1f} MB/s  {rate / base_rate:5.2f}x {base}")


def llmops(root: Path, state: Path, *args: str) -> float:
    env = {**os.environ, "LLMOPS_STATE_DIR": str(state)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "controller.cli.main", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"llmops {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return elapsed


def noop_apply(work: Path, rounds: int) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.apply_repo import build_repo, git
    from tests.tiny import make_tiny_llama

    os.environ["LLMOPS_STORE"] = f"s3://{BUCKET}/team"
    os.environ["LLMOPS_REGISTRY_URL"] = f"sqlite:///{work / 'registry.db'}"
    tiny = make_tiny_llama(work / "tiny")
    root_a = build_repo(work / "a", tiny)
    first = llmops(root_a, work / "state-a", "apply")
    git(root_a, "add", "llmops.lock")
    git(root_a, "commit", "-qm", "lock")
    subprocess.run(["git", "clone", "-q", str(root_a), str(work / "b")], check=True)
    times: dict[str, list[float]] = {"A": [], "B": []}
    for r in range(rounds):
        for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
            root = root_a if name == "A" else work / "b"
            times[name].append(llmops(root, work / f"state-{name.lower()}", "apply"))
    a, b = statistics.median(times["A"]), statistics.median(times["B"])
    print(f"apply on runner A (trains and evaluates the tiny repository): {first:.1f} s")
    print(f"no-op apply, median of {rounds}: runner A {a:.2f} s, runner B {b:.2f} s")
    print(f"  runner B / runner A: {b / a:.2f}x")


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    size_mb = int(args[0]) if args else 64
    count = int(args[1]) if len(args) > 1 else 3
    rounds = int(args[2]) if len(args) > 2 else 3
    server = start_s3()
    work = Path(tempfile.mkdtemp(prefix="llmops-store-bench-"))
    try:
        throughput(work, size_mb, count, rounds)
        if "--no-apply" not in sys.argv:
            noop_apply(work, rounds)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
