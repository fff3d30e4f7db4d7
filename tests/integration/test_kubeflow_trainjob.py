"""Distributed training on Kubernetes: the Kubeflow Trainer TrainJob a distributed run renders,
created through a real API server with Trainer's CRDs and torch-distributed runtime installed
(tests/envtest.py). No Trainer controller or nodes run there, so a test plays the controller
by patching the TrainJob's status conditions."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.apply.kubeflow_trainjob import (
    GROUP,
    PLURAL,
    RUNTIME,
    STORE_SECRET,
    VERSION,
    render_trainjob,
    submit,
    wait,
)
from controller.apply.kubernetes_job import JobFailed
from controller.apply.train import TrainFailed
from tests import envtest
from tests.integration.test_train_controller import repo, trainer  # noqa: F401  (fixture)

EXECUTOR = {
    "type": "kubernetes",
    "image": "registry.example/llmops-runner:1",
    "cpu": "4",
    "memory": "16Gi",
    "gpu": 1,
    "state_volume_claim": "llmops-state",
    "state_mount_path": "/llmops",
}
DISTRIBUTED = {"nproc_per_node": 2, "nnodes": 3, "strategy": "ddp"}
DIGEST = "sha256:" + "cd" * 32
NOW = "2026-12-06T12:00:00Z"


def trainjob(state: Path, namespace: str, store: bool) -> dict[str, Any]:
    job_file = state / "runs/exp/default/abcd/job.json"
    job_file.parent.mkdir(parents=True, exist_ok=True)
    return render_trainjob(
        job_file.relative_to(state) if store else job_file,
        "exp/default",
        DIGEST,
        EXECUTOR | {"namespace": namespace},
        DISTRIBUTED,
        state,
        STORE_SECRET if store else None,
    )


def test_with_a_store_the_nodes_read_the_secret_and_mount_no_claim(tmp_path: Path) -> None:
    job = trainjob(tmp_path / ".llmops", "ml", store=True)
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    spec = job["spec"]
    assert spec["runtimeRef"]["name"] == RUNTIME == "torch-distributed"
    trainer = spec["trainer"]
    assert trainer["numNodes"] == 3 and trainer["numProcPerNode"] == 2
    # the pod's store entry fetches the job (by its key in the state folder), then runs torchrun
    assert trainer["command"] == [
        "python",
        "-m",
        "controller.state.artifacts.pod",
        "runs/exp/default/abcd/job.json",
        "--",
        "python",
        "-m",
        "torch.distributed.run",
        "--module",
        "runners.train.worker",
        "{job}",
    ]
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"
    store = next(e for e in trainer["env"] if e["name"] == "LLMOPS_STORE")
    assert store["valueFrom"]["secretKeyRef"] == {
        "name": STORE_SECRET,
        "key": "LLMOPS_STORE",
        "optional": False,
    }
    (patch,) = spec["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "state", "emptyDir": {}}]  # scratch, no claim
    assert "persistentVolumeClaim" not in repr(job)


def test_without_a_store_the_claim_is_mounted(tmp_path: Path) -> None:
    job = trainjob(tmp_path / ".llmops", "ml", store=False)
    assert job["spec"]["trainer"]["command"][-1] == "/llmops/runs/exp/default/abcd/job.json"
    (patch,) = job["spec"]["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "llmops-state"}
    assert pod["containers"] == [
        {"name": "node", "volumeMounts": [{"name": "state", "mountPath": "/llmops"}]}
    ]
    assert not any(e["name"] == "LLMOPS_STORE" for e in job["spec"]["trainer"]["env"])


@pytest.fixture
def kube() -> Iterator[tuple[Any, str]]:
    api = envtest.trainer_cluster().client()
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    envtest.ensure_namespace(api, namespace)
    yield api, namespace


def conclude(api: Any, job: dict[str, Any], how: str, reason: str, message: str) -> None:
    """What Trainer's controller writes when a TrainJob ends."""
    from kubernetes import client

    condition = {
        "type": how,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": NOW,
    }
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        job["metadata"]["namespace"],
        PLURAL,
        job["metadata"]["name"],
        {"status": {"conditions": [condition]}},
    )


@pytest.mark.parametrize("store", [True, False], ids=["store", "volume-claim"])
def test_created_through_the_api_server_and_its_failure_reported(
    tmp_path: Path, kube: tuple[Any, str], store: bool
) -> None:
    from kubernetes import client

    api, ns = kube
    job = trainjob(tmp_path / ".llmops", ns, store=store)
    assert submit(api, job) == "created"
    assert submit(api, job) == "exists"
    stored = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, job["metadata"]["name"]
    )
    assert stored["spec"]["trainer"]["numProcPerNode"] == 2  # kept by the CRD's schema
    assert stored["spec"]["runtimeRef"]["kind"] == "ClusterTrainingRuntime"
    (patch,) = stored["spec"]["runtimePatches"]  # kept by the schema: the claim or a scratch
    volumes = repr(patch["trainingRuntimeSpec"])
    assert ("emptyDir" in volumes) is store and ("persistentVolumeClaim" in volumes) is not store
    if store:  # the Secret is referenced, its keys read by the nodes
        env = {e["name"]: e for e in stored["spec"]["trainer"]["env"]}
        assert env["LLMOPS_STORE"]["valueFrom"]["secretKeyRef"]["name"] == STORE_SECRET
    conclude(api, job, "Failed", "TrainingFailed", "node-0 rank 1: OOMKilled")
    status = wait(api, ns, job["metadata"]["name"], timeout_s=30, poll_s=0.05)
    assert status.failed and not status.succeeded
    assert status.reason == "TrainingFailed"
    assert status.message == "TrainingFailed: node-0 rank 1: OOMKilled"


def test_completion_and_an_invalid_trainjob_refused_with_the_field(
    tmp_path: Path, kube: tuple[Any, str]
) -> None:
    api, ns = kube
    job = trainjob(tmp_path / ".llmops", ns, store=True)
    submit(api, job)
    conclude(api, job, "Complete", "JobSetCompleted", "all nodes succeeded")
    assert wait(api, ns, job["metadata"]["name"], timeout_s=30, poll_s=0.05).succeeded
    bad = trainjob(tmp_path / ".llmops", ns, store=True)
    bad["metadata"]["name"] += "-bad"
    bad["spec"]["trainer"]["numProcPerNode"] = 0
    with pytest.raises(JobFailed, match="numProcPerNode must be greater than or equal to 1"):
        submit(api, bad)


def test_apply_submits_a_distributed_run_as_a_trainjob_and_reports_its_failure(
    repo: Path,  # noqa: F811
    kube: tuple[Any, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the Trainer: a kubernetes run with two nodes of two processes becomes a
    TrainJob (not a batch Job) in the real API server; the failure Trainer's controller
    records comes back as the run's error, with its reason."""
    from kubernetes import client
    from kubernetes.config import kube_config

    api, ns = kube
    # The cluster as a kube config names it; the client read KUBECONFIG when first imported.
    kubeconfig = str(envtest.trainer_cluster().kubeconfig)
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", kubeconfig)
    monkeypatch.delenv("LLMOPS_KUBERNETES_API", raising=False)
    monkeypatch.delenv("LLMOPS_STORE", raising=False)
    spec = repo / "specs/experiments/exp.yaml"
    spec.write_text(
        spec.read_text().replace(
            "    lora: {r: 4",
            "    distributed: {nproc_per_node: 2, nnodes: 2}\n"
            f"    executor: {{type: kubernetes, namespace: {ns}, timeout_s: 120}}\n"
            "    lora: {r: 4",
        )
    )
    custom = client.CustomObjectsApi(api)

    def fail_it() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not stop.is_set():
            items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
            if items:
                conclude(api, items[0], "Failed", "TrainingFailed", "node 1: exit code 1")
                return
            time.sleep(0.1)

    stop = threading.Event()
    watcher = threading.Thread(target=fail_it, daemon=True)
    watcher.start()
    try:
        with pytest.raises(TrainFailed) as failed:
            trainer(repo).train("exp", "default")
    finally:
        stop.set()
        watcher.join(timeout=5)
    assert "exp/default: TrainJob llmops-train-exp-default-" in str(failed.value)
    assert "failed: TrainingFailed: node 1: exit code 1" in str(failed.value)
    (stored,) = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
    assert stored["spec"]["trainer"]["numNodes"] == 2
    assert stored["spec"]["trainer"]["numProcPerNode"] == 2
    assert client.BatchV1Api(api).list_namespaced_job(ns).items == []
