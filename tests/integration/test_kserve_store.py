"""KServe over the S3 store: with LLMOPS_STORE on S3 (moto's server) and no storage_uri or
storage_root in the spec, the InferenceService reads `s3://<store>/serve/<model>/<N>/` with the
ServiceAccount whose Secret carries KServe's S3 annotations; the version's files are copied
there from their blobs, laid out as KServe's storage initializer downloads a prefix. Secret,
ServiceAccount and InferenceService (base, and the LoRA form with adapters) are accepted by a
real API server with KServe's CRDs (server-side apply, strict field validation)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.api.deployment import DeploymentSpec
from controller.state.artifacts.serving import publish, version_key
from controller.state.artifacts.url import open_store
from controller.state.blobs import BlobStore
from controller.targets.kserve import over_store
from runners.deploy import kserve_manifests, kserve_rollout
from runners.deploy.release import Release
from tests import envtest
from tests.servers import moto_s3

BUCKET = "llmops-kserve"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_s3() as url:
        yield url


@pytest.fixture
def store_url(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}"
    for name, value in {
        "LLMOPS_STORE": url,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "kserve",
        "AWS_SECRET_ACCESS_KEY": "kserve",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    store = open_store(url)
    from botocore.exceptions import ClientError

    with contextlib.suppress(ClientError):
        store.client.create_bucket(Bucket=BUCKET)  # type: ignore[union-attr]
    return url


def spec(namespace: str, model: str, adapters: list[str], **fields: Any) -> dict[str, Any]:
    target = {"namespace": namespace} | fields
    return DeploymentSpec(
        model=model, target="kserve", adapters=adapters, kserve=target
    ).model_dump()


def test_versions_are_served_from_the_store_with_kserves_s3_credentials(
    store_url: str, endpoint: str, tiny_model: Path, tmp_path: Path
) -> None:
    api = envtest.cluster().client()
    ns = f"t-{uuid.uuid4().hex[:8]}"
    envtest.ensure_namespace(api, ns)
    store = open_store(store_url)
    assert store is not None

    # The registry's blobs (as BlobStore.put stored them), copied to the version's folder.
    blobs = BlobStore(tmp_path / "blobs", store)
    files = []
    for path in sorted(p for p in tiny_model.rglob("*") if p.is_file()):
        blob = blobs.put(path)
        files.append((path.relative_to(tiny_model).as_posix(), blob.sha256, blob.size))
    assert publish(store, "tiny@1", files) == len(files)
    assert publish(store, "tiny@1", files) == 0  # there already: nothing copied again
    # What KServe's storage initializer downloads for the URI: every object under the
    # prefix, by its key relative to it.
    listed = dict(store.list(f"{version_key('tiny@1')}/"))
    got = tmp_path / "downloaded"
    for key in listed:
        relative = key.removeprefix(f"{version_key('tiny@1')}/")
        (got / relative).parent.mkdir(parents=True, exist_ok=True)
        store.download(key, got / relative)
    assert {
        p.relative_to(got).as_posix(): p.read_bytes() for p in got.rglob("*") if p.is_file()
    } == {
        p.relative_to(tiny_model).as_posix(): p.read_bytes()
        for p in tiny_model.rglob("*")
        if p.is_file()
    }

    # KServe's way of giving S3 credentials: an annotated Secret on a ServiceAccount.
    secret, account = kserve_manifests.store_credentials(
        ns, endpoint, "us-east-1", {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    )
    host = endpoint.removeprefix("http://")
    assert secret["metadata"]["annotations"] == {
        "serving.kserve.io/s3-endpoint": host,
        "serving.kserve.io/s3-usehttps": "0",
        "serving.kserve.io/s3-region": "us-east-1",
    }
    from kubernetes import client

    core = client.CoreV1Api(api)
    core.create_namespaced_secret(ns, secret, field_validation="Strict")
    core.create_namespaced_service_account(ns, account, field_validation="Strict")
    read = core.read_namespaced_service_account("llmops-store", ns)
    assert [s.name for s in read.secrets] == ["llmops-store"]

    # The base model's InferenceService: the s3:// URI, the ServiceAccount.
    release, uri, sa = over_store(Release("support", "tiny@1", spec(ns, "tiny@1", [])), None, False)
    assert uri == f"{store_url}/serve/tiny/1/" and sa == "llmops-store"
    runtime, isvc = kserve_manifests.render_manifests(release, uri, sa)
    kserve_rollout.apply(api, runtime)
    stored = kserve_rollout.apply(api, isvc)
    predictor = stored["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == f"{store_url}/serve/tiny/1/"
    assert predictor["serviceAccountName"] == "llmops-store"

    # LoRA adapters: each from its own s3:// folder of the store.
    lora = Release(
        "helper",
        "tiny@1",
        spec(ns, "tiny@1", ["alpha@2"], gpu=1),
        adapters=(("alpha", "alpha@2"),),
    )
    lora, uri, sa = over_store(lora, None, False)
    (isvc,) = kserve_manifests.render_manifests(lora, uri, sa)
    predictor = kserve_rollout.apply(api, isvc)["spec"]["predictor"]
    assert [u["uri"] for u in predictor["storageUris"]] == [
        f"{store_url}/serve/tiny/1/",
        f"{store_url}/serve/alpha/2/",
    ]
    assert predictor["serviceAccountName"] == "llmops-store"


def test_a_spec_naming_its_storage_keeps_it(store_url: str) -> None:
    named = spec("ml", "tiny@1", [], storage_uri="pvc://models/tiny/1")
    _, uri, sa = over_store(Release("support", "tiny@1", named), None, False)
    assert (uri, sa) == ("pvc://models/tiny/1", None)
