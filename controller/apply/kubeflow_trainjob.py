"""Apply, Kubernetes executor for distributed runs: a Kubeflow Trainer TrainJob
(trainer.kubeflow.org/v1alpha1) on its `torch-distributed` ClusterTrainingRuntime.

The runtime's torch plugin gives every node torchrun's settings (PET_NNODES,
PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT); each node runs
`torch.distributed.run` over runners/train/worker.py, and rank 0 writes the run folder. With
a store (LLMOPS_STORE) the nodes read and write it with the Secret's URL and credentials
through the pod's store entry (controller/state/artifacts/pod.py, node 0 pushes) and mount an
emptyDir, no claim; without one they mount the state folder's PersistentVolumeClaim, as the
batch Job does (controller/apply/kubernetes_job.py). Submitted and polled with
CustomObjectsApi.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kubernetes import client

from controller.apply.kubernetes_job import (
    MANAGED_BY,
    JobFailed,
    JobStatus,
    _in_volume,
    api_error_detail,
    job_name,
    over_store,
    runner_image,
    store_env,
)
from controller.apply.kubernetes_job import STORE_ENV as STORE_ENV  # the batch Job's, shared
from controller.apply.kubernetes_job import STORE_SECRET as STORE_SECRET

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
RUNTIME = "torch-distributed"  # the ClusterTrainingRuntime Kubeflow Trainer installs
CONTAINER = "node"  # the runtime's trainer container (its replicated job is "node" too)
TERMINAL = ("Complete", "Failed")


def _trainjob_resources(executor: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """The requests and limits of each node: cpu and memory, plus GPUs when asked for."""
    resources: dict[str, str] = {
        "cpu": str(executor.get("cpu", "2")),
        "memory": str(executor.get("memory", "8Gi")),
    }
    limits = dict(resources)
    if int(executor.get("gpu", 0)):
        limits["nvidia.com/gpu"] = str(int(executor["gpu"]))
    return resources, limits


def _trainjob_labels(run_id: str, digest: str) -> dict[str, str]:
    """The labels naming the run, its experiment and its digest on the TrainJob."""
    experiment, _, run = run_id.partition("/")
    return {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/component": "train",
        "llmops.dev/experiment": experiment[:63],
        "llmops.dev/run": run[:63],
        "llmops.dev/digest": digest.removeprefix("sha256:")[:16],
    }


def _trainjob_env(mount: str, store_secret: str | None) -> list[dict[str, Any]]:
    """The trainer's environment: offline hubs, then the store's Secret or the state folder."""
    env: list[dict[str, Any]] = [
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "HF_DATASETS_OFFLINE", "value": "1"},
    ]
    env.append({"name": "LLMOPS_STATE_DIR", "value": mount})
    if store_secret:
        env += store_env(store_secret)
    return env


def _state_volume_patches(
    executor: dict[str, Any], mount: str, store: bool = False
) -> list[dict[str, Any]]:
    """The runtime patch that mounts the state folder's volume claim on every node, or with a
    store the scratch emptyDir the pod's store entry fetches into."""
    claim = {"claimName": executor.get("state_volume_claim", "llmops-state")}
    volume: dict[str, Any] = (
        {"name": "state", "emptyDir": {}}
        if store
        else {"name": "state", "persistentVolumeClaim": claim}
    )
    pod = {
        "volumes": [volume],
        "containers": [
            {"name": CONTAINER, "volumeMounts": [{"name": "state", "mountPath": mount}]}
        ],
    }
    return [
        {
            "manager": "llmops.dev/apply",
            "trainingRuntimeSpec": {
                "template": {
                    "spec": {
                        "replicatedJobs": [
                            {
                                "name": CONTAINER,
                                "template": {"spec": {"template": {"spec": pod}}},
                            }
                        ]
                    }
                }
            },
        }
    ]


def render_trainjob(
    job_file: Path,
    run_id: str,
    digest: str,
    executor: dict[str, Any],
    distributed: dict[str, Any],
    state_root: Path,
    store_secret: str | None = None,
) -> dict[str, Any]:
    """The TrainJob for one distributed run. `store_secret`: the Secret naming the store
    (the nodes then mount no volume claim); None: the state folder's claim is mounted."""
    mount = executor.get("state_mount_path", "/llmops")
    ranks = ["python", "-m", "torch.distributed.run", "--module", "runners.train.worker"]
    if store_secret:
        command = over_store(Path(job_file).as_posix(), [*ranks, "{job}"])
    else:
        command = [*ranks, _in_volume(str(job_file), state_root, mount)]
    resources, limits = _trainjob_resources(executor)
    labels = _trainjob_labels(run_id, digest)
    env = _trainjob_env(mount, store_secret)
    spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": RUNTIME},
        "trainer": {
            "image": runner_image(executor, state_root),
            "command": command,
            "numNodes": int(distributed.get("nnodes", 1)),
            "numProcPerNode": int(distributed.get("nproc_per_node", 1)),
            "resourcesPerNode": {"requests": resources, "limits": limits},
            "env": env,
        },
    }
    spec["runtimePatches"] = _state_volume_patches(executor, mount, store=bool(store_secret))
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": {
            "name": job_name(run_id, digest),
            "namespace": executor.get("namespace", "default"),
            "labels": labels,
        },
        "spec": spec,
    }


def submit(api: client.ApiClient, trainjob: dict[str, Any]) -> str:
    """Create the TrainJob; one that exists already (same run digest) is watched."""
    from kubernetes.client.rest import ApiException

    meta = trainjob["metadata"]
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, meta["namespace"], PLURAL, trainjob
        )
        return "created"
    except ApiException as err:
        if err.status == 409:
            return "exists"
        if err.status == 404:
            raise JobFailed(
                f"cannot create TrainJob {meta['name']}: the cluster has no TrainJob kind; "
                "install Kubeflow Trainer (its CRDs and the torch-distributed runtime)"
            ) from err
        raise JobFailed(
            f"cannot create TrainJob {meta['name']}: {err.status} {api_error_detail(err)}"
        ) from err


def wait(
    api: client.ApiClient, namespace: str, name: str, timeout_s: float, poll_s: float = 5.0
) -> JobStatus:
    """Poll the TrainJob's conditions until Complete or Failed (or the timeout)."""
    from kubernetes.client.rest import ApiException

    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as err:
            if err.status == 404:
                raise JobFailed(
                    f"TrainJob {namespace}/{name} is gone (deleted while llmops waited for it)"
                ) from err
            raise JobFailed(
                f"cannot read TrainJob {namespace}/{name}: {err.status} {err.reason}"
            ) from err
        for condition in (found.get("status") or {}).get("conditions") or []:
            if condition.get("type") in TERMINAL and condition.get("status") == "True":
                ok = condition["type"] == "Complete"
                reason = condition.get("reason") or ""
                said = ": ".join(p for p in (reason, condition.get("message")) if p)
                return JobStatus(name, ok, not ok, said, reason)
        if time.monotonic() > deadline:
            raise JobFailed(
                f"TrainJob {namespace}/{name} did not finish in {timeout_s:.0f} s; see "
                f"'kubectl -n {namespace} describe trainjob {name}'"
            )
        time.sleep(poll_s)
