"""KServe manifests against KServe's own CRD schemas (copied from kserve's config/crd into
tests/fixtures/kserve), with the API server's rule that unknown fields are errors."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator
from kubernetes import client

from controller.api.deployment import DeploymentSpec
from runners.deploy.kserve_manifests import (
    ANNOTATION_TEMPLATE,
    render_inference_service,
    render_manifests,
    render_runtime,
)
from runners.deploy.release import DeployError, Release

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kserve"


@functools.cache
def crd_schema(plural: str) -> dict[str, Any]:
    with (FIXTURES / f"serving.kserve.io_{plural}.yaml").open() as handle:
        crd = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (served,) = [v for v in crd["spec"]["versions"] if v.get("served") and v.get("storage")]
    return served["schema"]["openAPIV3Schema"]


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Keys a structural schema does not declare: the API server prunes them, or with
    fieldValidation=Strict (as llmops applies) rejects them."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(value, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                found += unknown_fields(item, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += unknown_fields(item, extra, f"{path}.{key}")
            elif properties is not None:
                found.append(f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]")
    return found


def check(manifest: dict[str, Any], plural: str) -> list[str]:
    schema = crd_schema(plural)
    errors = [
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in Draft7Validator(schema).iter_errors(manifest)
    ]
    return errors + [f"unknown field {f}" for f in unknown_fields(manifest, schema)]


def release(version: str = "support-assistant@2", **kserve: Any) -> Release:
    target = {"namespace": "llm", "storage_uri": "pvc://llmops-models/support-assistant/2"}
    spec = DeploymentSpec(
        model="support-assistant@champion",
        target="kserve",
        api_key={"secret": "support-keys/api-key"},
        kserve=target | kserve,
        collect={"enabled": True, "into": "support-feedback"},
    ).model_dump()
    return Release("support-assistant", version, spec, ["How do I reset my password?"])


def test_manifests_validate_against_the_crds() -> None:
    runtime, isvc = render_manifests(
        release(min_replicas=1, max_replicas=3, canary_traffic_percent=10, gpu=1)
    )
    assert runtime["kind"] == "ServingRuntime" and isvc["kind"] == "InferenceService"
    assert check(runtime, "servingruntimes") == []
    assert check(isvc, "inferenceservices") == []


def test_inference_service_fields() -> None:
    runtime, isvc = render_manifests(
        release(min_replicas=1, max_replicas=3, canary_traffic_percent=10, gpu=1)
    )
    predictor = isvc["spec"]["predictor"]
    assert predictor["minReplicas"] == 1 and predictor["maxReplicas"] == 3
    assert predictor["canaryTrafficPercent"] == 10
    model = predictor["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in [
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    ]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["storageUri"] == "pvc://llmops-models/support-assistant/2"
    assert model["resources"]["limits"] == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}
    env = {e["name"]: e for e in model["env"]}
    config = json.loads(env["LLMOPS_SERVE_CONFIG"]["value"])
    assert config["model_dir"] == "/mnt/models" and config["port"] == 8080
    assert config["host"] == "0.0.0.0" and config["model_version"] == "support-assistant@2"
    assert env[config["api_key_env"]]["valueFrom"] == {
        "secretKeyRef": {"name": "support-keys", "key": "api-key"}
    }
    assert isvc["metadata"]["annotations"]["llmops.dev/model-version"] == "support-assistant@2"
    assert isvc["metadata"]["labels"]["llmops.dev/deployment"] == "support-assistant"
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    assert container["command"] == ["python", "-m", "runners.serve"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}


def test_the_config_loads_in_the_runtime() -> None:
    from runners.serve.config import parse_config

    _, isvc = render_manifests(release())
    env = {e["name"]: e for e in isvc["spec"]["predictor"]["model"]["env"]}
    config = parse_config(env["LLMOPS_SERVE_CONFIG"]["value"], "manifest")
    assert config.name == "support-assistant" and config.collect.enabled


def test_validation_catches_a_broken_manifest() -> None:
    _, isvc = render_manifests(release())
    broken = copy.deepcopy(isvc)
    broken["spec"]["predictor"]["minReplicas"] = "1"
    assert any(
        "minReplicas" in e and "not of type 'integer'" in e
        for e in check(broken, "inferenceservices")
    )
    del broken["spec"]["predictor"]["model"]["modelFormat"]["name"]
    assert any("'name' is a required property" in e for e in check(broken, "inferenceservices"))


def test_the_kubernetes_sanitizer_alone_would_send_python_names() -> None:
    """Why to_manifest exists: kubernetes 37 serialises kserve's models by their to_dict(),
    with attribute names the API server does not know."""
    isvc = render_inference_service(release(), "llmops-runtime")
    naive = client.ApiClient().sanitize_for_serialization(isvc)
    problems = check(naive, "inferenceservices")
    assert "unknown field .api_version" in problems
    assert "unknown field .spec.predictor.min_replicas" in problems


def test_only_a_canary_change_keeps_the_template_digest() -> None:
    base = render_manifests(release())[1]["metadata"]["annotations"][ANNOTATION_TEMPLATE]
    canary = render_manifests(release(canary_traffic_percent=10))[1]
    newer = render_manifests(release("support-assistant@3"))[1]
    assert canary["metadata"]["annotations"][ANNOTATION_TEMPLATE] == base
    assert newer["metadata"]["annotations"][ANNOTATION_TEMPLATE] != base


def test_a_new_image_is_a_new_runtime() -> None:
    first = render_runtime(release()).metadata.name
    assert render_runtime(release()).metadata.name == first
    assert render_runtime(release(image="registry.example/llmops-serve:2")).metadata.name != first


def test_rendering_is_deterministic() -> None:
    assert json.dumps(render_manifests(release())) == json.dumps(render_manifests(release()))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"storage_uri": None}, "needs kserve.storage_uri"),
        ({"api_key": {"env": "LLMOPS_KEY_SUPPORT"}}, "store the key in a Kubernetes secret"),
        ({"name": "1st-assistant"}, "must start with a letter"),
        ({"name": "a" * 48}, "at most 47 characters"),
    ],
)
def test_bad_inputs_are_named(change: dict[str, Any], message: str) -> None:
    base = release()
    spec = copy.deepcopy(base.spec)
    name = change.pop("name", base.name)
    if "storage_uri" in change:
        spec["kserve"]["storage_uri"] = change.pop("storage_uri")
    spec.update(change)
    with pytest.raises(DeployError, match=message):
        render_manifests(Release(name, base.model_version, spec, []))
