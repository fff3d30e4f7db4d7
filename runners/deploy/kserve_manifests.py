"""Runner `deploy`, target kserve, manifests: the ServingRuntime and InferenceService for a
release, rendered with the kserve SDK's models and the kubernetes client's (no cluster).

The ServingRuntime's name carries a digest of its spec, so changing the image makes a new
runtime instead of changing the one the serving revision came from; the InferenceService
carries a digest of what shapes its pods (kserve_rollout.py applies them).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import kserve
from kubernetes import client
from pydantic import BaseModel

from runners.deploy.release import (
    CONTAINER_PORT,
    DeployError,
    Release,
    api_key_env,
    client_key_envs,
    container_config,
    kserve_name,
)

GROUP = "serving.kserve.io"
ISVC_VERSION = "v1beta1"
RUNTIME_VERSION = "v1alpha1"
MODEL_FORMAT = "llmops"
MODEL_FORMAT_VERSION = "1"
# The runtime image without weights: `llmops deploy` renders its context with
# docker_context.py.
DEFAULT_IMAGE = "llmops/serve:0.1.0"
# KServe merges the InferenceService's model container into the runtime's by this name.
CONTAINER_NAME = "kserve-container"
LABEL_DEPLOYMENT = "llmops.dev/deployment"
ANNOTATION_VERSION = "llmops.dev/model-version"
# A digest of everything that shapes the predictor's pods; a change means a new revision.
ANNOTATION_TEMPLATE = "llmops.dev/template"
# KServe's deployment mode: Serverless (Knative revisions, canary traffic) or RawDeployment
# (a Kubernetes Deployment, no revisions; KServe 0.15+ also calls it Standard).
ANNOTATION_MODE = "serving.kserve.io/deploymentMode"
RAW_MODES = ("RawDeployment", "Standard")

_SANITIZER = client.ApiClient()


def to_manifest(obj: Any) -> dict[str, Any]:
    """Plain JSON of a manifest built from kserve and kubernetes models.

    kubernetes 37's `sanitize_for_serialization` handles its own (pydantic) models, but for
    the kserve SDK's models it falls back to their `to_dict()`, which keeps the Python
    attribute names (`api_version`, `min_replicas`); an API server would drop those keys
    silently. So kserve models are mapped through their `attribute_map` here.
    """
    return _plain(obj)


def _plain(obj: Any) -> Any:
    if isinstance(obj, list):
        return [_plain(item) for item in obj]
    if isinstance(obj, dict):
        return {key: _plain(value) for key, value in obj.items()}
    if not isinstance(obj, BaseModel) and hasattr(type(obj), "attribute_map"):
        return {
            obj.attribute_map[attr]: _plain(value)
            for attr in obj.openapi_types
            if (value := getattr(obj, attr)) is not None
        }
    return _SANITIZER.sanitize_for_serialization(obj)


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _labels(release: Release) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": "llmops",
        "app.kubernetes.io/component": "serve",
        LABEL_DEPLOYMENT: release.name,
    }


def render_runtime(release: Release) -> kserve.V1alpha1ServingRuntime:
    """The llmops ServingRuntime for one release: image, entry point, port, readiness."""
    image = release.spec["kserve"].get("image") or DEFAULT_IMAGE
    container = client.V1Container(
        name=CONTAINER_NAME,
        image=image,
        command=["python", "-m", "runners.serve"],
        env=[client.V1EnvVar(name="HF_HUB_OFFLINE", value="1")],
        ports=[client.V1ContainerPort(container_port=CONTAINER_PORT, protocol="TCP")],
        # Ready means loaded and the smoke prompts answered, which the runtime checks
        # before its readiness route says so.
        readiness_probe=client.V1Probe(
            http_get=client.V1HTTPGetAction(path="/v2/health/ready", port=CONTAINER_PORT),
            period_seconds=10,
            failure_threshold=3,
        ),
    )
    spec = kserve.V1alpha1ServingRuntimeSpec(
        supported_model_formats=[
            kserve.V1alpha1SupportedModelFormat(
                name=MODEL_FORMAT, version=MODEL_FORMAT_VERSION, auto_select=False
            )
        ],
        # The runtime answers KServe's v2 health routes and OpenAI's, not v1 predict.
        protocol_versions=["v2"],
        containers=[container],
    )
    name = f"llmops-{release.name}-{_digest(to_manifest(spec))[:8]}"
    return kserve.V1alpha1ServingRuntime(
        api_version=f"{GROUP}/{RUNTIME_VERSION}",
        kind="ServingRuntime",
        metadata=client.V1ObjectMeta(
            name=name, namespace=release.spec["kserve"]["namespace"], labels=_labels(release)
        ),
        spec=spec,
    )


def _env(release: Release) -> list[client.V1EnvVar]:
    config = json.dumps(container_config(release, "kserve"), sort_keys=True)
    env = [client.V1EnvVar(name="LLMOPS_SERVE_CONFIG", value=config)]
    key_env = api_key_env(release, "kserve")
    if key_env:
        secret, _, key = release.spec["api_key"]["secret"].partition("/")
        env.append(
            client.V1EnvVar(
                name=key_env,
                value_from=client.V1EnvVarSource(
                    secret_key_ref=client.V1SecretKeySelector(name=secret, key=key)
                ),
            )
        )
    # Each named client's key from its secret, under the variable the config names for it.
    key_envs = client_key_envs(release, "kserve")
    for entry in release.spec.get("clients") or []:
        secret, _, key = entry["api_key"]["secret"].partition("/")
        env.append(
            client.V1EnvVar(
                name=key_envs[entry["name"]],
                value_from=client.V1EnvVarSource(
                    secret_key_ref=client.V1SecretKeySelector(name=secret, key=key)
                ),
            )
        )
    return env


def render_inference_service(
    release: Release, runtime_name: str, storage_uri: str | None = None
) -> kserve.V1beta1InferenceService:
    """The InferenceService: the model from `storage_uri` served by the llmops runtime."""
    target = release.spec["kserve"]
    uri = storage_uri or target.get("storage_uri")
    if not uri:
        raise DeployError(
            f"deployment {release.name}: target kserve needs kserve.storage_uri, where the "
            "cluster reads the weights (pvc://<claim>/<path>, s3://..., gs://...)"
        )
    resources = {"cpu": str(target["cpu"]), "memory": str(target["memory"])}
    limits = dict(resources)
    if int(target.get("gpu") or 0):
        limits["nvidia.com/gpu"] = str(int(target["gpu"]))
    predictor = kserve.V1beta1PredictorSpec(
        min_replicas=int(target["min_replicas"]),
        max_replicas=int(target["max_replicas"]),
        canary_traffic_percent=target.get("canary_traffic_percent"),
        model=kserve.V1beta1ModelSpec(
            name=CONTAINER_NAME,
            model_format=kserve.V1beta1ModelFormat(name=MODEL_FORMAT, version=MODEL_FORMAT_VERSION),
            runtime=runtime_name,
            protocol_version="v2",
            storage_uri=uri,
            resources=client.V1ResourceRequirements(requests=resources, limits=limits),
            env=_env(release),
        ),
    )
    annotations = {ANNOTATION_VERSION: release.model_version}
    mode = target.get("deployment_mode")
    if mode:
        annotations[ANNOTATION_MODE] = mode
    if mode in RAW_MODES and target.get("canary_traffic_percent") is not None:
        raise DeployError(
            f"deployment {release.name}: canary_traffic_percent needs KServe's Serverless mode "
            "(Knative revisions split traffic); RawDeployment has one Deployment and no "
            "revisions, so drop the canary or set kserve.deployment_mode: Serverless"
        )
    # The canary percentage routes traffic between revisions; it does not make one.
    shape = {k: v for k, v in to_manifest(predictor).items() if k != "canaryTrafficPercent"}
    annotations[ANNOTATION_TEMPLATE] = _digest({"predictor": shape, **annotations})
    return kserve.V1beta1InferenceService(
        api_version=f"{GROUP}/{ISVC_VERSION}",
        kind="InferenceService",
        metadata=client.V1ObjectMeta(
            name=kserve_name(release),
            namespace=target["namespace"],
            labels=_labels(release),
            annotations=annotations,
        ),
        spec=kserve.V1beta1InferenceServiceSpec(predictor=predictor),
    )


def render_manifests(release: Release, storage_uri: str | None = None) -> list[dict[str, Any]]:
    """[ServingRuntime, InferenceService] as plain dicts, for `--show`, YAML and `rollout`."""
    runtime = render_runtime(release)
    isvc = render_inference_service(release, runtime.metadata.name, storage_uri)
    return [to_manifest(runtime), to_manifest(isvc)]
