"""Cluster training over the S3 store, no shared volume: the Job the controller submits to a
real Kubernetes API server (tests/envtest.py) names the store's Secret and mounts no claim;
a test kubelet runs its container's command as a local process with only the pod's env (the
Secret's keys resolved, LLMOPS_STATE_DIR an empty folder, the S3 store moto's server), then
patches the Job Complete; the controller then registers the run from what the pod pushed."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.apply.kubernetes_job import STORE_SECRET
from controller.state.artifacts.base import blob_key
from controller.state.artifacts.url import open_store
from tests import envtest
from tests.conftest import PROJECT_ROOT
from tests.integration.test_train_controller import repo, trainer  # noqa: F401  (fixture)
from tests.servers import moto_s3

BUCKET = "llmops-pods"
NOW = "2026-12-06T12:00:00Z"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_s3() as url:
        yield url


@pytest.fixture
def s3_env(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The controller's store settings, which the Secret `llmops-store` holds for the pod."""
    settings = {
        "LLMOPS_STORE": f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "pod",
        "AWS_SECRET_ACCESS_KEY": "pod",
        "AWS_REGION": "us-east-1",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = open_store(settings["LLMOPS_STORE"])
    from botocore.exceptions import ClientError

    with contextlib.suppress(ClientError):
        store.client.create_bucket(Bucket=BUCKET)  # type: ignore[union-attr]
    return settings


def pod_env(
    api: Any, namespace: str, env_vars: list[dict[str, Any]], state: Path
) -> dict[str, Any]:
    """The container's env as the kubelet gives it: values, and Secret keys read back from the
    API server (an optional key the Secret lacks is left out); the image's PATH and
    PYTHONPATH; the emptyDir at LLMOPS_STATE_DIR is `state`."""
    import base64

    from kubernetes import client

    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(PROJECT_ROOT)}
    secrets: dict[str, dict[str, str]] = {}
    for var in env_vars:
        if "valueFrom" not in var:
            env[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]["secretKeyRef"]
        if ref["name"] not in secrets:
            data = client.CoreV1Api(api).read_namespaced_secret(ref["name"], namespace).data
            secrets[ref["name"]] = {k: base64.b64decode(v).decode() for k, v in data.items()}
        if ref["key"] in secrets[ref["name"]]:
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            assert ref.get("optional"), f"required key {ref['key']} missing from {ref['name']}"
    env["LLMOPS_STATE_DIR"] = str(state)
    return env


def as_dict(obj: Any) -> Any:
    from kubernetes import client

    return client.ApiClient().sanitize_for_serialization(obj)


def store_secret(api: Any, ns: str, settings: dict[str, str]) -> None:
    """The Secret `llmops-store` an operator creates in the namespace."""
    from kubernetes import client

    meta = client.V1ObjectMeta(name=STORE_SECRET)
    client.CoreV1Api(api).create_namespaced_secret(
        ns, client.V1Secret(metadata=meta, string_data=dict(settings))
    )


def use_cluster(cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes.config import kube_config

    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(cluster.kubeconfig))
    monkeypatch.delenv("LLMOPS_KUBERNETES_API", raising=False)


def finish(
    api: Any,
    namespace: str,
    name: str,
    ok: bool,
    reason: str = "PodExit",
    message: str = "pod exited",
) -> None:
    """What the Job controller writes when a Job ends (Kubernetes 1.36's order)."""
    from kubernetes import client

    how, first = ("Complete", "SuccessCriteriaMet") if ok else ("Failed", "FailureTarget")
    condition = {"status": "True", "reason": reason, "message": message}
    condition["lastTransitionTime"] = NOW
    status: dict[str, Any] = {
        "startTime": NOW,
        "conditions": [{"type": first, **condition}, {"type": how, **condition}],
    }
    status |= {"succeeded": 1, "completionTime": NOW} if ok else {"failed": 1}
    client.BatchV1Api(api).patch_namespaced_job_status(name, namespace, {"status": status})


def store_namespace(
    s3_env: dict[str, str] | None, monkeypatch: pytest.MonkeyPatch, cluster: Any = None
) -> tuple[Any, str]:
    """A fresh namespace on the test API server (`cluster`, else the plain one), the store's
    Secret in it (unless `s3_env` is None), and the cluster in use by the controller."""
    cluster = cluster or envtest.cluster()
    api = cluster.client()
    ns = f"t-{uuid.uuid4().hex[:8]}"
    envtest.ensure_namespace(api, ns)
    if s3_env is not None:
        store_secret(api, ns, s3_env)
    use_cluster(cluster, monkeypatch)
    return api, ns


def job_kubelet(api: Any, ns: str, state: Path, cwd: Path, ran: dict[str, Any], run: bool) -> None:
    """Plays the kubelet and the Job controller for the first Job in `ns`: runs its container
    command with the pod's env (or, `run` False, fails it as a Job out of retries)."""
    from kubernetes import client

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        items = client.BatchV1Api(api).list_namespaced_job(ns).items
        if items:
            job = ran["job"] = items[0]
            ran["pod"] = job.spec.template.spec
            if not run:
                reason, why = "BackoffLimitExceeded", "Job has reached the specified backoff limit"
                finish(api, ns, job.metadata.name, False, reason, why)
                return
            (container,) = job.spec.template.spec.containers
            done = subprocess.run(
                container.command,
                env=pod_env(api, ns, as_dict(container)["env"], state),
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=240,
            )
            ran["rc"], ran["log"] = done.returncode, done.stdout + done.stderr
            finish(api, ns, job.metadata.name, done.returncode == 0)
            return
        time.sleep(0.2)


def test_a_job_over_the_store_trains_in_an_empty_pod_and_the_controller_registers_it(
    repo: Path,  # noqa: F811
    s3_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    api, ns = store_namespace(s3_env, monkeypatch)
    spec = repo / "specs/experiments/exp.yaml"
    spec.write_text(
        spec.read_text().replace(
            "    lora: {r: 4",
            f"    executor: {{type: kubernetes, namespace: {ns}, timeout_s: 300}}\n"
            "    lora: {r: 4",
        )
    )
    pod_state = tmp_path / "pod-scratch"  # the pod's emptyDir: nothing of the controller's
    pod_state.mkdir()
    ran: dict[str, Any] = {}

    def kubelet() -> None:
        job_kubelet(api, ns, pod_state, tmp_path, ran, run=True)

    outcome = train_beside(repo, kubelet, ran, join_s=300)
    assert ran.get("rc") == 0, ran.get("log")
    # The manifest the API server accepted: the Secret referenced, an emptyDir, no claim.
    pod = ran["pod"]
    assert [v.empty_dir is not None for v in pod.volumes] == [True]
    assert all(v.persistent_volume_claim is None for v in pod.volumes)
    refs = {e.name: e.value_from.secret_key_ref for e in pod.containers[0].env if e.value_from}
    assert refs["LLMOPS_STORE"].name == STORE_SECRET and not refs["LLMOPS_STORE"].optional
    assert pod.containers[0].command[:3] == ["python", "-m", "controller.state.artifacts.pod"]
    # The pod fetched its inputs from the store (a scratch copy), trained, and pushed.
    assert outcome.status == "trained" and outcome.ref == "helper@1"
    job_key = pod.containers[0].command[3]
    assert (pod_state / job_key).parent.joinpath("model").is_dir()
    run_dir = outcome.run_dir
    assert (run_dir / "result.json").is_file() and (run_dir / "log.jsonl").is_file()
    # Every file of the registered version is a blob in the store.
    store = open_store(os.environ["LLMOPS_STORE"])
    assert store is not None
    assert outcome.version.files
    for f in outcome.version.files:
        assert store.size(blob_key(f.sha256)) == f.size, f.path


def train_beside(root: Path, node: Callable[[], None], ran: dict[str, Any], join_s: float) -> Any:
    """The experiment trained while `node` (a test kubelet in a thread) runs the pod; a
    failure carries the pod's log."""
    thread = threading.Thread(target=node, daemon=True)
    thread.start()
    try:
        outcome = trainer(root).train("exp", "default")
    except Exception as err:
        thread.join(timeout=join_s)
        raise AssertionError(f"{err}\npod log:\n{ran.get('log')}") from err
    thread.join(timeout=join_s)
    return outcome


@pytest.mark.hardening
def test_a_trainjob_over_the_store_runs_its_ranks_in_an_empty_pod(
    repo: Path,  # noqa: F811
    s3_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A distributed run (2 processes on one node) as a TrainJob over the store: its command
    (the pod's store entry over torchrun) run locally with the pod's env and the torch
    plugin's PET_* settings; the controller registers what rank 0 pushed."""
    from kubernetes import client

    from controller.apply.kubeflow_trainjob import GROUP, PLURAL, VERSION

    api, ns = store_namespace(s3_env, monkeypatch, envtest.trainer_cluster())
    spec = repo / "specs/experiments/exp.yaml"
    spec.write_text(
        spec.read_text().replace(
            "    lora: {r: 4",
            "    distributed: {nproc_per_node: 2}\n"
            f"    executor: {{type: kubernetes, namespace: {ns}, timeout_s: 400}}\n"
            "    lora: {r: 4",
        )
    )
    pod_state = tmp_path / "pod-scratch"
    pod_state.mkdir()
    ran: dict[str, Any] = {}
    custom = client.CustomObjectsApi(api)

    def trainer_node() -> None:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
            if items:
                job = ran["job"] = items[0]
                spec = job["spec"]["trainer"]
                env = pod_env(api, ns, spec["env"], pod_state)
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", 0))
                    port = sock.getsockname()[1]
                env |= {  # what Trainer's torch plugin gives each node
                    "PET_NNODES": str(spec["numNodes"]),
                    "PET_NPROC_PER_NODE": str(spec["numProcPerNode"]),
                    "PET_NODE_RANK": "0",
                    "PET_MASTER_ADDR": "127.0.0.1",
                    "PET_MASTER_PORT": str(port),
                }
                done = subprocess.run(
                    spec["command"],
                    env=env,
                    cwd=tmp_path,
                    capture_output=True,
                    text=True,
                    timeout=360,
                )
                ran["rc"], ran["log"] = done.returncode, done.stdout + done.stderr
                how = "Complete" if done.returncode == 0 else "Failed"
                condition = {"type": how, "status": "True", "reason": "Done", "message": how}
                condition["lastTransitionTime"] = NOW
                custom.patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    ns,
                    PLURAL,
                    job["metadata"]["name"],
                    {"status": {"conditions": [condition]}},
                )
                return
            time.sleep(0.2)

    outcome = train_beside(repo, trainer_node, ran, join_s=400)
    assert ran.get("rc") == 0, ran.get("log")
    assert "persistentVolumeClaim" not in repr(ran["job"])
    assert outcome.status == "trained" and outcome.ref == "helper@1"
    assert (outcome.run_dir / "result.json").is_file()
    store = open_store(os.environ["LLMOPS_STORE"])
    assert store is not None
    for f in outcome.version.files:
        assert store.size(blob_key(f.sha256)) == f.size, f.path
