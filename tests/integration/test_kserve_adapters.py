"""KServe with LoRA adapters: the InferenceService for KServe's huggingface runtime (vLLM
backend: `--enable-lora`, one `--lora-modules name=path` per adapter, the base and each
adapter from a storageUris entry of their own) for a Deployment with `adapters` and for an
adapter-only version alone, accepted by a real Kubernetes API server with KServe's CRDs
(server-side apply, strict field validation); the names and versions it carries are those a
local runtime given the same config lists at /v1/models."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.api.deployment import DeploymentSpec
from runners.deploy import kserve_manifests, kserve_rollout
from runners.deploy.release import (
    DeployError,
    Release,
    base_version_of,
    config_adapters,
    lora_rank,
)
from tests import envtest
from tests.serving import config, running
from tests.tiny import make_random_adapter

ROOT_URI = "pvc://llmops-models/models"


@pytest.fixture(scope="module")
def views(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Versions as the registry lays them out (<model>/<number>), the adapters naming their
    base as `../../tiny/1`."""
    root = tmp_path_factory.mktemp("views")
    shutil.copytree(tiny_model, root / "tiny" / "1")
    make_random_adapter(root / "tiny" / "1", root / "alpha" / "1", seed=1)
    # rank 24: above vLLM's default --max-lora-rank (16), so the manifest must raise it
    make_random_adapter(root / "tiny" / "1", root / "beta" / "2", seed=2, rank=24)
    return root


@pytest.fixture
def kube() -> Iterator[tuple[Any, str]]:
    api = envtest.cluster().client()
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    envtest.ensure_namespace(api, namespace)
    yield api, namespace


def spec(namespace: str, model: str, adapters: list[str], **fields: Any) -> dict[str, Any]:
    target = {"namespace": namespace, "gpu": 1, "storage_root": ROOT_URI} | fields
    return DeploymentSpec(
        model=model, target="kserve", adapters=adapters, kserve=target
    ).model_dump()


def served_by(isvc: dict[str, Any]) -> set[tuple[str, str]]:
    """(name, version) of every model the InferenceService serves: the base's from its args
    and version annotation, each adapter's from --lora-modules and the adapters annotation."""
    model = isvc["spec"]["predictor"]["model"]
    args = model["args"]
    annotations = isvc["metadata"]["annotations"]
    (base,) = [a.split("=", 1)[1] for a in args if a.startswith("--model_name=")]
    modules = args[args.index("--lora-modules") + 1 :]
    listed = json.loads(annotations[kserve_manifests.ANNOTATION_ADAPTERS])
    assert [m.split("=", 1)[0] for m in modules] == [a["name"] for a in listed]
    base_version = annotations[kserve_manifests.ANNOTATION_BASE_VERSION]
    return {(base, base_version)} | {(a["name"], a["version"]) for a in listed}


def test_adapters_render_for_the_huggingface_runtime_and_the_api_server_takes_them(
    kube: tuple[Any, str], views: Path
) -> None:
    api, namespace = kube
    cfg = config("support", views / "tiny" / "1", model_version="tiny@1")
    cfg["adapters"] = [
        {"name": "alpha", "version": "alpha@1", "dir": str(views / "alpha" / "1")},
        {"name": "beta", "version": "beta@2", "dir": str(views / "beta" / "2")},
    ]
    release = Release(
        "support",
        cfg["model_version"],
        spec(namespace, "tiny@1", ["alpha@1", "beta@2"]),
        adapters=config_adapters(cfg),
        base_version=base_version_of(cfg["model_dir"]),
        max_lora_rank=lora_rank([a["dir"] for a in cfg["adapters"]] + [cfg["model_dir"]]),
    )
    assert release.max_lora_rank == 24  # alpha 4, beta 24; the base folder is no adapter
    manifests = kserve_manifests.render_manifests(release)
    # KServe's own runtime serves them: no llmops ServingRuntime.
    assert [m["kind"] for m in manifests] == ["InferenceService"]
    stored = kserve_rollout.apply(api, manifests[0])
    predictor = stored["spec"]["predictor"]
    # Everything rendered survived strict validation against the CRD's schema.
    assert predictor["storageUris"] == [
        {"uri": f"{ROOT_URI}/tiny/1", "mountPath": "/mnt/models/base"},
        {"uri": f"{ROOT_URI}/alpha/1", "mountPath": "/mnt/models/adapters/alpha"},
        {"uri": f"{ROOT_URI}/beta/2", "mountPath": "/mnt/models/adapters/beta"},
    ]
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "huggingface"}
    assert model["runtime"] == "kserve-huggingfaceserver"
    assert model["args"] == [
        "--model_name=support",
        "--model_dir=/mnt/models/base",
        "--backend=vllm",
        "--enable-lora",
        "--max-lora-rank=32",  # the smallest rank vLLM takes that holds 24
        "--lora-modules",
        "alpha=/mnt/models/adapters/alpha",
        "beta=/mnt/models/adapters/beta",
    ]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "storageUri" not in model

    # The local runtime given the same config serves the same names at the same versions.
    with running(cfg, views.parent) as runtime:
        listed = httpx.get(f"http://127.0.0.1:{runtime.cfg['port']}/v1/models").json()["data"]
    local = {(m["id"], m["owned_by"]) for m in listed}
    assert local == {("support", "tiny@1"), ("alpha", "alpha@1"), ("beta", "beta@2")}
    assert served_by(stored) == local

    # Swapping one adapter's version is a new pod template (a new revision), not a no-op.
    newer = Release(
        "support",
        "tiny@1",
        spec(namespace, "tiny@1", ["alpha@1", "beta@3"]),
        adapters=(("alpha", "alpha@1"), ("beta", "beta@3")),
    )
    again = kserve_rollout.apply(api, kserve_manifests.render_manifests(newer)[0])
    template = kserve_manifests.ANNOTATION_TEMPLATE
    assert again["metadata"]["annotations"][template] != stored["metadata"]["annotations"][template]
    assert again["spec"]["predictor"]["storageUris"][2]["uri"] == f"{ROOT_URI}/beta/3"


def test_an_adapter_only_version_is_served_on_its_base(kube: tuple[Any, str], views: Path) -> None:
    api, namespace = kube
    model_dir = views / "alpha" / "1"
    release = Release(
        "assistant",
        "alpha@1",
        spec(namespace, "alpha@1", [], storage_uri="s3://bucket/alpha-1"),
        base_version=base_version_of(model_dir),
        max_lora_rank=lora_rank([model_dir]),
    )
    assert release.base_version == "tiny@1"
    (manifest,) = kserve_manifests.render_manifests(release)
    stored = kserve_rollout.apply(api, manifest)
    predictor = stored["spec"]["predictor"]
    # storage_uri names the served version (the adapter); its base comes from storage_root.
    assert predictor["storageUris"] == [
        {"uri": f"{ROOT_URI}/tiny/1", "mountPath": "/mnt/models/base"},
        {"uri": "s3://bucket/alpha-1", "mountPath": "/mnt/models/adapters/assistant"},
    ]
    args = predictor["model"]["args"]
    assert args[0] == "--model_name=tiny"
    assert args[-2:] == ["--lora-modules", "assistant=/mnt/models/adapters/assistant"]
    assert "--max-lora-rank=8" in args  # rank 4 -> vLLM's smallest above it
    annotations = stored["metadata"]["annotations"]
    assert annotations[kserve_manifests.ANNOTATION_VERSION] == "alpha@1"
    assert served_by(stored) == {("tiny", "tiny@1"), ("assistant", "alpha@1")}


def test_what_the_huggingface_runtime_cannot_do_is_refused_by_name(views: Path) -> None:
    def render(**fields: Any) -> None:
        target = fields.pop("kserve", {})
        dumped = DeploymentSpec(
            model="tiny@1",
            target="kserve",
            adapters=["alpha@1"],
            kserve={"gpu": 1, "storage_root": ROOT_URI} | target,
            **fields,
        ).model_dump()
        release = Release("support", "tiny@1", dumped, adapters=(("alpha", "alpha@1"),))
        kserve_manifests.render_manifests(release)

    render()
    with pytest.raises(DeployError, match=r"kserve\.storage_root to find the model tiny@1"):
        render(kserve={"storage_root": None})
    with pytest.raises(DeployError, match=r"kserve\.storage_root to find adapter alpha alpha@1"):
        render(kserve={"storage_root": None, "storage_uri": "pvc://m/tiny/1"})
    with pytest.raises(DeployError, match=r"does not implement api_key; drop it"):
        render(api_key={"secret": "keys/support"})
    with pytest.raises(DeployError, match=r"vLLM backend, which needs a GPU; set kserve\.gpu"):
        render(kserve={"gpu": 0})
    with pytest.raises(DeployError, match=r"LoRA rank 600, above the largest vLLM serves"):
        dumped = DeploymentSpec(
            model="tiny@1", target="kserve", adapters=["alpha@1"], kserve={"gpu": 1}
        ).model_dump()
        dumped["kserve"]["storage_root"] = ROOT_URI
        release = Release("s", "tiny@1", dumped, adapters=(("alpha", "alpha@1"),))
        kserve_manifests.render_manifests(replace(release, max_lora_rank=600))
    with pytest.raises(DeployError, match=r"is itself a LoRA adapter \(on tiny@1\)"):
        dumped = DeploymentSpec(
            model="alpha@1", target="kserve", adapters=["beta@2"], kserve={"gpu": 1}
        ).model_dump()
        release = Release("s", "alpha@1", dumped, base_version="tiny@1")
        kserve_manifests.render_manifests(release)
    # Without adapters nothing changes: llmops' own runtime, one storageUri.
    plain = DeploymentSpec(
        model="tiny@1", target="kserve", kserve={"storage_uri": "pvc://m/tiny/1"}
    ).model_dump()
    kinds = [m["kind"] for m in kserve_manifests.render_manifests(Release("s", "tiny@1", plain))]
    assert kinds == ["ServingRuntime", "InferenceService"]
