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
from urllib.parse import urlparse

import kserve
from kserve.models import V1beta1StorageUri
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
    served_adapters,
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
# LoRA adapters are served by KServe's own huggingface runtime with its vLLM backend
# (`--enable-lora`, `--lora-modules name=path`), the base and each adapter fetched from a
# storageUris entry of their own (KServe 0.15+).
HF_FORMAT = "huggingface"
HF_RUNTIME = "kserve-huggingfaceserver"
HF_BASE_DIR = "/mnt/models/base"
HF_ADAPTER_DIR = "/mnt/models/adapters"
# The adapters served, [{"name", "version"}] as JSON: what `llmops status` and tests compare
# with what a local runtime's /v1/models lists.
ANNOTATION_ADAPTERS = "llmops.dev/adapters"
# The base version those adapters run on, served under --model_name.
ANNOTATION_BASE_VERSION = "llmops.dev/base-version"

# With the artifact store on S3, KServe's storage initializer reads s3:// URIs with the
# credentials of a Secret attached to the predictor's ServiceAccount, KServe's annotations on
# the Secret naming the endpoint (KServe's "Deploy InferenceService with a saved model on S3").
# The Secret is the one training Jobs read (LLMOPS_STORE, AWS_* keys): one per namespace.
STORE_SECRET = "llmops-store"
STORE_ACCOUNT = "llmops-store"
S3_ENDPOINT = "serving.kserve.io/s3-endpoint"
S3_USE_HTTPS = "serving.kserve.io/s3-usehttps"
S3_REGION = "serving.kserve.io/s3-region"

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


def store_credentials(
    namespace: str,
    endpoint_url: str | None,
    region: str | None,
    keys: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """[Secret, ServiceAccount] giving KServe's storage initializer the S3 store: the Secret
    annotated with the endpoint (host:port), https or not and the region, holding `keys`
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, LLMOPS_STORE, ...) when given (left out, the
    Secret is a template to fill in); the ServiceAccount lists it."""
    parsed = urlparse(endpoint_url or "https://s3.amazonaws.com")
    annotations = {
        S3_ENDPOINT: parsed.netloc,
        S3_USE_HTTPS: "0" if parsed.scheme == "http" else "1",
    }
    if region:
        annotations[S3_REGION] = region
    meta = {"name": STORE_SECRET, "namespace": namespace, "annotations": annotations}
    secret: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": meta}
    secret["type"] = "Opaque"
    if keys:
        secret["stringData"] = dict(keys)
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": STORE_ACCOUNT, "namespace": namespace},
        "secrets": [{"name": STORE_SECRET}],
    }
    return [secret, account]


def render_inference_service(
    release: Release,
    runtime_name: str,
    storage_uri: str | None = None,
    service_account: str | None = None,
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
        service_account_name=service_account,
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
    return _inference_service(release, predictor, {ANNOTATION_VERSION: release.model_version})


def serves_lora(release: Release) -> bool:
    """Whether the release serves LoRA adapters: `adapters` beside the model, or an
    adapter-only model version."""
    return bool(served_adapters(release)) or release.base_version is not None


def _version_uri(release: Release, version: str, what: str) -> str:
    root = (release.spec["kserve"].get("storage_root") or "").rstrip("/")
    if not root:
        raise DeployError(
            f"deployment {release.name}: target kserve needs kserve.storage_root to find "
            f"{what} {version}: the URI under which the cluster reads registry versions as "
            "<storage_root>/<model>/<number>/ (pvc://<claim>/models, s3://<bucket>/models)"
        )
    name, _, number = version.partition("@")
    return version_uri(root, name, number)


# Object stores whose downloaders (KServe's storage initializer, its model agent) fetch every
# key that starts with the URI's path.
PREFIX_SCHEMES = ("s3://", "gs://")


def version_uri(root: str, name: str, number: str) -> str:
    """`<root>/<name>/<number>`, ending with `/` on an object store: KServe lists a prefix, so
    without the slash version 1's URI would also fetch version 10's files (as `0/...`)."""
    uri = f"{root.rstrip('/')}/{name}/{number}"
    return f"{uri}/" if uri.startswith(PREFIX_SCHEMES) else uri


def _lora_refusals(release: Release) -> None:
    spec = release.spec
    unsupported = [
        ("api_key", bool(spec.get("api_key"))),
        ("clients", bool(spec.get("clients"))),
        ("collect.enabled", bool((spec.get("collect") or {}).get("enabled"))),
        ("embeddings.enabled", bool((spec.get("embeddings") or {}).get("enabled"))),
    ]
    found = [field for field, on in unsupported if on]
    if found:
        raise DeployError(
            f"deployment {release.name}: target kserve serves LoRA adapters with KServe's "
            f"huggingface runtime, which does not implement {', '.join(found)}; drop "
            f"{'them' if len(found) > 1 else 'it'} or serve the adapters with target local "
            "or docker"
        )
    if not int(spec["kserve"].get("gpu") or 0):
        raise DeployError(
            f"deployment {release.name}: KServe's huggingface runtime serves LoRA adapters "
            "with its vLLM backend, which needs a GPU; set kserve.gpu (1 or more)"
        )


def lora_plan(release: Release, storage_uri: str | None = None) -> dict[str, Any]:
    """What KServe's huggingface runtime serves for a LoRA release: the base's served name,
    version and URI, and each adapter's (served name, version, URI). An adapter-only model
    version is its own adapter under the deployment's name, on its base (served under the
    base Model's name)."""
    uri = storage_uri or release.spec["kserve"].get("storage_uri")
    if release.base_version is None:
        base = {
            "name": release.name,
            "version": release.model_version,
            "uri": uri or _version_uri(release, release.model_version, "the model"),
        }
        adapters = [
            {"name": n, "version": v, "uri": _version_uri(release, v, f"adapter {n}")}
            for n, v in served_adapters(release)
        ]
    else:
        if served_adapters(release):
            raise DeployError(
                f"deployment {release.name}: its model {release.model_version} is itself a "
                f"LoRA adapter (on {release.base_version}); serve adapters on a full base "
                f"version: model {release.base_version}"
            )
        base_name = release.base_version.split("@", 1)[0]
        if base_name == release.name:
            raise DeployError(
                f"deployment {release.name}: its model {release.model_version} is a LoRA "
                f"adapter on {release.base_version}, which KServe's huggingface runtime serves "
                "under the base Model's name, the deployment's own; rename the deployment"
            )
        base = {
            "name": base_name,
            "version": release.base_version,
            "uri": _version_uri(release, release.base_version, "the base"),
        }
        adapters = [
            {
                "name": release.name,
                "version": release.model_version,
                "uri": uri or _version_uri(release, release.model_version, "the adapter"),
            }
        ]
    return {"base": base, "adapters": adapters}


# vLLM's `--max-lora-rank` takes one of these (LoRAConfig's allowed ranks since 0.6; its
# default, 16, refuses larger adapters).
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def _max_lora_rank(release: Release) -> list[str]:
    """`--max-lora-rank=N`: the smallest rank vLLM accepts that holds every adapter served;
    nothing when the ranks are not known (a manifest rendered from the spec alone)."""
    rank = release.max_lora_rank
    if rank is None:
        return []
    fits = [r for r in VLLM_LORA_RANKS if r >= rank]
    if not fits:
        raise DeployError(
            f"deployment {release.name}: an adapter has LoRA rank {rank}, above the largest "
            f"vLLM serves ({VLLM_LORA_RANKS[-1]}); train it with a smaller training.lora.r"
        )
    return [f"--max-lora-rank={fits[0]}"]


def render_lora_inference_service(
    release: Release, storage_uri: str | None = None, service_account: str | None = None
) -> kserve.V1beta1InferenceService:
    """The InferenceService for a LoRA release on KServe's huggingface runtime (vLLM backend):
    the base and every adapter from a storageUris entry of their own, `--enable-lora` and one
    `--lora-modules name=path` per adapter, so one pod serves them all and a request's
    `model` picks the adapter (as the local runtime does)."""
    _lora_refusals(release)
    target = release.spec["kserve"]
    plan = lora_plan(release, storage_uri)
    resources = {"cpu": str(target["cpu"]), "memory": str(target["memory"])}
    limits = resources | {"nvidia.com/gpu": str(int(target["gpu"]))}
    modules = [f"{a['name']}={HF_ADAPTER_DIR}/{a['name']}" for a in plan["adapters"]]
    predictor = kserve.V1beta1PredictorSpec(
        min_replicas=int(target["min_replicas"]),
        max_replicas=int(target["max_replicas"]),
        canary_traffic_percent=target.get("canary_traffic_percent"),
        service_account_name=service_account,
        storage_uris=[
            V1beta1StorageUri(uri=plan["base"]["uri"], mount_path=HF_BASE_DIR),
            *(
                V1beta1StorageUri(uri=a["uri"], mount_path=f"{HF_ADAPTER_DIR}/{a['name']}")
                for a in plan["adapters"]
            ),
        ],
        model=kserve.V1beta1ModelSpec(
            model_format=kserve.V1beta1ModelFormat(name=HF_FORMAT),
            runtime=HF_RUNTIME,
            args=[
                f"--model_name={plan['base']['name']}",
                f"--model_dir={HF_BASE_DIR}",
                "--backend=vllm",
                "--enable-lora",
                *_max_lora_rank(release),
                "--lora-modules",
                *modules,
            ],
            resources=client.V1ResourceRequirements(requests=resources, limits=limits),
        ),
    )
    served = [{"name": a["name"], "version": a["version"]} for a in plan["adapters"]]
    annotations = {
        ANNOTATION_VERSION: release.model_version,
        ANNOTATION_BASE_VERSION: plan["base"]["version"],
        ANNOTATION_ADAPTERS: json.dumps(served, separators=(",", ":")),
    }
    return _inference_service(release, predictor, annotations)


def _inference_service(
    release: Release, predictor: kserve.V1beta1PredictorSpec, annotations: dict[str, str]
) -> kserve.V1beta1InferenceService:
    target = release.spec["kserve"]
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


def render_manifests(
    release: Release, storage_uri: str | None = None, service_account: str | None = None
) -> list[dict[str, Any]]:
    """[ServingRuntime, InferenceService] as plain dicts, for `--show`, YAML and `rollout`;
    [InferenceService] alone for LoRA adapters (KServe's own huggingface runtime).
    `service_account`: the predictor's (STORE_ACCOUNT for s3:// URIs of the store)."""
    if serves_lora(release):
        return [to_manifest(render_lora_inference_service(release, storage_uri, service_account))]
    runtime = render_runtime(release)
    isvc = render_inference_service(release, runtime.metadata.name, storage_uri, service_account)
    return [to_manifest(runtime), to_manifest(isvc)]
