"""KServe's own storage initializer (kserve-storage 0.21.0, `make kserve-storage`) on what
llmops publishes to the S3 store: versions 1 and 10 of a model side by side under
serve/<model>/, the URI llmops gives the InferenceService for version 1, and KServe's
`Storage.download` run in a process with the env KServe's webhook derives from the Secret
llmops renders (pkg/credentials/s3/utils.go: s3-endpoint + s3-usehttps -> AWS_ENDPOINT_URL,
s3-region -> AWS_DEFAULT_REGION, the keys from the Secret's data). It must fetch exactly
version 1's files: KServe lists by prefix, and serve/tiny/1 is a prefix of serve/tiny/10/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from controller.state.artifacts.serving import publish
from controller.state.artifacts.url import open_store
from controller.state.blobs import BlobStore
from controller.targets.kserve import over_store
from runners.deploy import kserve_manifests
from runners.deploy.release import Release
from tests.integration.test_kserve_store import endpoint, spec, store_url  # noqa: F401

KEYS = {"AWS_ACCESS_KEY_ID": "kserve", "AWS_SECRET_ACCESS_KEY": "kserve"}


def webhook_env(secret: dict[str, object]) -> dict[str, str]:
    """The storage initializer container's S3 env, as KServe's webhook builds it from the
    Secret on the InferenceService's ServiceAccount (BuildSecretEnvs, BuildS3EnvVars)."""
    notes = secret["metadata"]["annotations"]  # type: ignore[index]
    data = secret["stringData"]  # type: ignore[index]
    host = notes["serving.kserve.io/s3-endpoint"]
    https = notes.get("serving.kserve.io/s3-usehttps", "1")
    return {
        "AWS_ACCESS_KEY_ID": data["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": data["AWS_SECRET_ACCESS_KEY"],
        "S3_ENDPOINT": host,
        "S3_USE_HTTPS": https,
        "AWS_ENDPOINT_URL": ("http://" if https == "0" else "https://") + host,
        "AWS_DEFAULT_REGION": notes["serving.kserve.io/s3-region"],
    }


def kserve_download(uri: str, out: Path, env: dict[str, str]) -> dict[str, bytes]:
    """KServe's `Storage.download(uri, out)` in a process of its own with only `env`; the
    files it left in `out`, by path."""
    code = "import sys; from kserve_storage import Storage; Storage.download(*sys.argv[1:])"
    base = {"PATH": os.environ["PATH"], "HOME": str(out.parent)}
    if os.environ.get("PYTHONPATH"):
        base["PYTHONPATH"] = os.environ["PYTHONPATH"]
    done = subprocess.run(
        [sys.executable, "-c", code, uri, str(out)],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_kserves_initializer_fetches_exactly_the_version_the_uri_names(
    store_url: str,  # noqa: F811
    endpoint: str,  # noqa: F811
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    pytest.importorskip(
        "kserve_storage", reason="KServe's storage initializer: run 'make kserve-storage'"
    )
    store = open_store(store_url)
    assert store is not None
    blobs = BlobStore(tmp_path / "blobs", store)
    ten = tmp_path / "tiny-10"  # version 10: other bytes in a file, and a file of its own
    shutil.copytree(tiny_model, ten)
    config = json.loads((ten / "config.json").read_text())
    (ten / "config.json").write_text(json.dumps({**config, "llmops_version": 10}))
    (ten / "NOTES-10.md").write_text("version 10 only\n")
    for ref, folder in (("tiny@1", tiny_model), ("tiny@10", ten)):
        files = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            blob = blobs.put(path)
            files.append((path.relative_to(folder).as_posix(), blob.sha256, blob.size))
        assert publish(store, ref, files) == len(files)

    _, uri, account = over_store(
        Release("support", "tiny@1", spec("ml", "tiny@1", [])), None, False
    )
    assert uri == f"{store_url}/serve/tiny/1/" and account == "llmops-store"
    secret, _ = kserve_manifests.store_credentials("ml", endpoint, "us-east-1", KEYS)
    env = webhook_env(secret)
    assert env["AWS_ENDPOINT_URL"] == endpoint  # moto's http:// endpoint, rebuilt by the rule

    got = kserve_download(uri, tmp_path / "mnt-models", env)
    want = {
        p.relative_to(tiny_model).as_posix(): p.read_bytes()
        for p in tiny_model.rglob("*")
        if p.is_file()
    }
    assert got == want

    # The URI as it was published before (no trailing slash): KServe's own prefix listing
    # then adds version 10's files, as 0/<path>, to version 1's.
    before = kserve_download(uri.rstrip("/"), tmp_path / "before", env)
    assert "0/NOTES-10.md" in before and "0/config.json" in before
    assert {k: v for k, v in before.items() if not k.startswith("0/")} == want


def test_storage_root_uris_end_with_a_slash_on_object_stores_only() -> None:
    assert kserve_manifests.version_uri("s3://b/p/serve", "tiny", "1") == "s3://b/p/serve/tiny/1/"
    assert kserve_manifests.version_uri("gs://b/models/", "tiny", "1") == "gs://b/models/tiny/1/"
    # A claim's path is a folder, mounted as is: unchanged.
    assert kserve_manifests.version_uri("pvc://c/models", "tiny", "1") == "pvc://c/models/tiny/1"
