"""Apply, Kubernetes executor: a training run (or an evaluation, apply/evaluate_job.py) as a
batch/v1 Job running the same runner.

The Job mounts the llmops state folder from a PersistentVolumeClaim, so the job file, the
base model, the prepared data and the run folder are the same files the controller sees. With
an S3 store (LLMOPS_STORE) it mounts no claim: the store's URL and credentials come from the
Secret `llmops-store`, and the pod's entry (controller/state/artifacts/pod.py) fetches the
job and its inputs into an emptyDir and pushes the run folder back.
Rendered with the official client's models; submitted and watched with its BatchV1Api.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from runners import kube
from runners.deploy import images
from runners.errors import LlmopsError

MANAGED_BY = "llmops"
TERMINAL = ("Complete", "Failed")
DEFAULT_RUNNER_IMAGE = "ghcr.io/llmops/runner:0.1.0"  # Executor.image's default
RUNNER_UID = 10001  # the runner image's user (runners/deploy/images.py)
STORE_ENV = "LLMOPS_STORE"
# The Secret a store-backed job reads: LLMOPS_STORE (required) and the usual AWS settings.
STORE_SECRET = "llmops-store"
STORE_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION")
POD_ENTRY = ["python", "-m", "controller.state.artifacts.pod"]


class JobFailed(LlmopsError):
    """The Job failed or did not finish in time; the message says which and where to look."""


def job_name(run_id: str, digest: str, component: str = "train") -> str:
    """DNS-1123 name, at most 63 characters, unique per run digest."""
    slug = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")
    short = digest.removeprefix("sha256:")[:10]
    base = f"llmops-{component}-{slug}"[: 63 - len(short) - 1].rstrip("-")
    return f"{base}-{short}"


def label_value(text: str) -> str:
    """`text` as a label value: at most 63 of [A-Za-z0-9-_.], alphanumeric at both ends."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63].strip("-_.")


class OutsideVolume(LlmopsError):
    """A job's input lies outside the state folder, which is all the volume claim holds."""


def _in_volume(path: str, state_root: Path, mount: str) -> str:
    try:
        relative = Path(path).resolve().relative_to(state_root.resolve())
    except ValueError:
        raise OutsideVolume(
            f"{path} is outside the state folder {state_root}, which is all a Job's volume "
            "claim holds"
        ) from None
    return f"{mount.rstrip('/')}/{relative.as_posix()}"


def secret_env(name: str, secret: str, optional: bool) -> dict[str, Any]:
    """An env var from a key of a Secret (as the API server's JSON has it)."""
    ref = {"name": secret, "key": name, "optional": optional}
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def store_env(secret: str) -> list[dict[str, Any]]:
    """The store's URL (required) and AWS settings (each optional) from the Secret."""
    return [secret_env(STORE_ENV, secret, optional=False)] + [
        secret_env(key, secret, optional=True) for key in STORE_KEYS
    ]


def over_store(job_key: str, command: list[str]) -> list[str]:
    """`command` run by the pod's store entry: the job at `job_key` (relative to the state
    folder) fetched first, `{job}` in `command` naming it, the results pushed after."""
    return [*POD_ENTRY, job_key, "--", *command]


def runner_image(executor: dict[str, Any], state_root: Path) -> str:
    """The executor's image; when the spec keeps the default, the runner image that
    `llmops images build --push` pushed from this state folder, named by digest."""
    image = executor.get("image") or DEFAULT_RUNNER_IMAGE
    if image == DEFAULT_RUNNER_IMAGE:
        return images.pushed(state_root, "runner") or image
    return image


def render_job(
    job_file: Path,
    run_id: str,
    digest: str,
    executor: dict[str, Any],
    state_root: Path,
    store_secret: str | None = None,
) -> client.V1Job:
    """The Job for one run; `job_file` lies in the state folder that the volume holds, or,
    with `store_secret`, in the store the Secret names (the pod then mounts an emptyDir)."""
    experiment, _, run = run_id.partition("/")
    return _render(
        job_name(run_id, digest),
        "train",
        {"llmops.dev/experiment": label_value(experiment), "llmops.dev/run": label_value(run)},
        ["python", "-m", "runners.train"],
        job_file,
        digest,
        executor,
        state_root,
        store_secret,
    )


def render_eval_job(
    job_file: Path,
    suite: str,
    model_ref: str,
    key: str,
    executor: dict[str, Any],
    state_root: Path,
    store_secret: str | None = None,
) -> client.V1Job:
    """The Job that runs suite `suite` on the registered `model_ref` (name@number) with the
    evaluate runner; `key` tells one evaluation's Job from another's (its results folder).
    Over the claim or the store as `render_job`."""
    model, _, number = model_ref.partition("@")
    return _render(
        job_name(f"{suite}-{model}-{number}", key, component="eval"),
        "evaluate",
        {
            "llmops.dev/suite": label_value(suite),
            "llmops.dev/model": label_value(model),
            "llmops.dev/version": label_value(number),
        },
        ["python", "-m", "runners.evaluate"],
        job_file,
        key,
        executor,
        state_root,
        store_secret,
    )


def _render(
    name: str,
    component: str,
    labelled: dict[str, str],
    runner: list[str],
    job_file: Path,
    digest: str,
    executor: dict[str, Any],
    state_root: Path,
    store_secret: str | None,
) -> client.V1Job:
    """A Job running `runner` on `job_file`: over the state volume's claim, or over the
    store (the pod's entry fetches the job and pushes its output folder back)."""
    mount = executor.get("state_mount_path", "/llmops")
    if store_secret:
        job_key = Path(job_file).resolve().relative_to(state_root.resolve()).as_posix()
        command = over_store(job_key, [*runner, "{job}"])
        volume = client.V1Volume(name="state", empty_dir=client.V1EmptyDirVolumeSource())
        from_secret = [
            client.V1EnvVar(
                name=e["name"],
                value_from=client.V1EnvVarSource(
                    secret_key_ref=client.V1SecretKeySelector(**e["valueFrom"]["secretKeyRef"])
                ),
            )
            for e in store_env(store_secret)
        ]
    else:
        command = [*runner, _in_volume(str(job_file), state_root, mount)]
        volume = client.V1Volume(
            name="state",
            persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                claim_name=executor.get("state_volume_claim", "llmops-state")
            ),
        )
        from_secret = []
    resources: dict[str, str] = {
        "cpu": str(executor.get("cpu", "2")),
        "memory": str(executor.get("memory", "8Gi")),
    }
    limits = dict(resources)
    if int(executor.get("gpu", 0)):
        limits["nvidia.com/gpu"] = str(int(executor["gpu"]))
    labels = {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/component": component,
        **labelled,
        "llmops.dev/digest": digest.removeprefix("sha256:")[:16],
    }
    container = client.V1Container(
        name=component,
        image=runner_image(executor, state_root),
        command=command,
        env=[
            client.V1EnvVar(name="HF_HUB_OFFLINE", value="1"),
            client.V1EnvVar(name="HF_DATASETS_OFFLINE", value="1"),
            client.V1EnvVar(name="LLMOPS_STATE_DIR", value=mount),
            *from_secret,
        ],
        resources=client.V1ResourceRequirements(requests=resources, limits=limits),
        volume_mounts=[client.V1VolumeMount(name="state", mount_path=mount)],
    )
    return client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=client.V1ObjectMeta(
            name=name,
            namespace=executor.get("namespace", "default"),
            labels=labels,
        ),
        spec=client.V1JobSpec(
            backoff_limit=int(executor.get("backoff_limit", 2)),
            ttl_seconds_after_finished=7 * 24 * 3600,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    restart_policy="Never",
                    # The runner image's user; fsGroup gives it the state volume.
                    security_context=client.V1PodSecurityContext(
                        run_as_non_root=True,
                        run_as_user=RUNNER_UID,
                        fs_group=RUNNER_UID,
                    ),
                    containers=[container],
                    volumes=[volume],
                ),
            ),
        ),
    )


TRAIN_PATHS = ("base_model", "train_file", "eval_file", "output")


def rewrite_paths(
    job_fields: dict[str, Any], state_root: Path, mount: str, keys: tuple[str, ...] = TRAIN_PATHS
) -> dict[str, Any]:
    """The job file as the container sees it: the state paths in `keys` (a path, or names
    mapped to paths) under the volume's mount."""
    out = dict(job_fields)
    for key in keys:
        value = out.get(key)
        if isinstance(value, dict):
            out[key] = {name: _in_volume(path, state_root, mount) for name, path in value.items()}
        elif value:
            out[key] = _in_volume(value, state_root, mount)
    return out


def manifest(job: client.V1Job) -> dict[str, Any]:
    return client.ApiClient().sanitize_for_serialization(job)


@dataclass
class JobStatus:
    name: str
    succeeded: bool
    failed: bool
    message: str  # "<reason>: <message>" from the Job's terminal condition
    reason: str = ""  # the condition's reason: BackoffLimitExceeded, DeadlineExceeded, ...


def api_client(host: str | None = None) -> client.ApiClient:
    """The cluster from the pod's service account or the kube config; `host` for tests."""
    try:
        return kube.api_client(host)
    except kube.ClusterUnavailable as err:
        raise JobFailed(str(err)) from err


def submit(api: client.ApiClient, job: client.V1Job) -> str:
    """Create the Job; one that exists already (same run digest) is watched, not duplicated."""
    from kubernetes.client.rest import ApiException

    batch = client.BatchV1Api(api)
    try:
        batch.create_namespaced_job(job.metadata.namespace, job)
        return "created"
    except ApiException as err:
        if err.status == 409:
            return "exists"
        raise JobFailed(
            f"cannot create Job {job.metadata.name}: {err.status} {api_error_detail(err)}"
        ) from err


def api_error_detail(err: Any) -> str:
    """The API server's message in an ApiException (its JSON body), else the HTTP reason."""
    try:
        return str(json.loads(err.body or "{}").get("message") or err.reason)
    except ValueError:
        return str(err.body or err.reason)


def wait(
    api: client.ApiClient, namespace: str, name: str, timeout_s: float, poll_s: float = 5.0
) -> JobStatus:
    """Poll the Job's status until Complete or Failed (or the timeout).

    Polling rather than a watch: a watch that the API server closes (or a proxy cuts) must
    be resumed from its resourceVersion, and a read every few seconds costs no more here.
    """
    from kubernetes.client.rest import ApiException

    batch = client.BatchV1Api(api)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            job = batch.read_namespaced_job_status(name, namespace)
        except ApiException as err:
            if err.status == 404:
                raise JobFailed(
                    f"Job {namespace}/{name} is gone (deleted while llmops waited for it)"
                ) from err
            raise JobFailed(
                f"cannot read Job {namespace}/{name}: {err.status} {err.reason}"
            ) from err
        status = job.status
        for condition in status.conditions or []:
            if condition.type in TERMINAL and condition.status == "True":
                ok = condition.type == "Complete"
                said = ": ".join(p for p in (condition.reason, condition.message) if p)
                return JobStatus(name, ok, not ok, said, condition.reason or "")
        if time.monotonic() > deadline:
            raise JobFailed(
                f"Job {namespace}/{name} did not finish in {timeout_s:.0f} s; "
                f"see 'kubectl -n {namespace} describe job {name}'"
            )
        time.sleep(poll_s)
