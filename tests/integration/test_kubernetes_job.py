"""Training as a Kubernetes Job: the rendered manifest, and submit/watch against a real
Kubernetes API server (tests/envtest.py). It has no Job controller or nodes, so a test plays
the Job controller by patching the Job's status subresource as Kubernetes 1.36 requires it
(a terminal condition only after FailureTarget or SuccessCriteriaMet, with start time)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.apply.kubernetes_job import (
    JobFailed,
    api_client,
    job_name,
    manifest,
    render_job,
    rewrite_paths,
    submit,
    wait,
)
from tests import envtest

EXECUTOR = {
    "type": "kubernetes",
    "image": "registry.example/llmops-runner:1",
    "namespace": "ml",
    "cpu": "4",
    "memory": "16Gi",
    "gpu": 1,
    "state_volume_claim": "llmops-state",
    "state_mount_path": "/llmops",
    "backoff_limit": 2,
}
DIGEST = "sha256:" + "ab" * 32


def rendered(tmp_path: Path) -> dict[str, Any]:
    state = tmp_path / ".llmops"
    job_file = state / "runs/support-lora/default/abcd/job.json"
    job_file.parent.mkdir(parents=True)
    return manifest(render_job(job_file, "support-lora/default", DIGEST, EXECUTOR, state))


def test_manifest_runs_the_runner_on_the_state_volume(tmp_path: Path) -> None:
    job = rendered(tmp_path)
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["metadata"]["namespace"] == "ml"
    assert job["metadata"]["name"] == job_name("support-lora/default", DIGEST)
    assert len(job["metadata"]["name"]) <= 63
    spec = job["spec"]
    assert spec["backoffLimit"] == 2
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/llmops-runner:1"
    assert container["command"] == [
        "python",
        "-m",
        "runners.train",
        "/llmops/runs/support-lora/default/abcd/job.json",
    ]
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in container["env"]
    assert container["volumeMounts"] == [{"mountPath": "/llmops", "name": "state"}]
    assert pod["volumes"] == [
        {"name": "state", "persistentVolumeClaim": {"claimName": "llmops-state"}}
    ]
    assert job["metadata"]["labels"]["llmops.dev/run"] == "default"


def test_job_paths_are_rewritten_into_the_volume(tmp_path: Path) -> None:
    state = tmp_path / ".llmops"
    fields = {
        "base_model": str(state / "models/base/1"),
        "train_file": str(state / "data/x"),
        "eval_file": None,
        "output": str(state / "runs/e/r/d"),
        "run_id": "e/r",
    }
    assert rewrite_paths(fields, state, "/llmops") == {
        "base_model": "/llmops/models/base/1",
        "train_file": "/llmops/data/x",
        "eval_file": None,
        "output": "/llmops/runs/e/r/d",
        "run_id": "e/r",
    }


NOW = "2026-11-25T12:00:00Z"


@pytest.fixture
def kube() -> Iterator[tuple[Any, str]]:
    api = envtest.cluster().client()
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    envtest.ensure_namespace(api, namespace)
    yield api, namespace


def job_in(tmp_path: Path, namespace: str, **executor: Any) -> Any:
    state = tmp_path / ".llmops"
    (state / "runs/x").mkdir(parents=True, exist_ok=True)
    fields = EXECUTOR | {"namespace": namespace} | executor
    return render_job(state / "runs/x/job.json", "exp/default", DIGEST, fields, state)


def finish(api: Any, job: Any, how: str, reason: str, message: str) -> None:
    """What the Job controller writes when a Job ends."""
    from kubernetes import client

    first = "SuccessCriteriaMet" if how == "Complete" else "FailureTarget"
    condition = {"status": "True", "reason": reason, "message": message, "lastTransitionTime": NOW}
    status: dict[str, Any] = {
        "startTime": NOW,
        "conditions": [{"type": first, **condition}, {"type": how, **condition}],
    }
    if how == "Complete":
        status |= {"succeeded": 1, "completionTime": NOW}
    else:
        status |= {"failed": 3}
    client.BatchV1Api(api).patch_namespaced_job_status(
        job.metadata.name, job.metadata.namespace, {"status": status}
    )


def test_submit_creates_once_and_wait_sees_completion(
    tmp_path: Path, kube: tuple[Any, str]
) -> None:
    from kubernetes import client

    api, ns = kube
    job = job_in(tmp_path, ns)
    assert submit(api, job) == "created"
    assert submit(api, job) == "exists"
    stored = client.BatchV1Api(api).read_namespaced_job(job.metadata.name, ns)
    (container,) = stored.spec.template.spec.containers
    assert container.image == EXECUTOR["image"]
    assert container.command[-1] == "/llmops/runs/x/job.json"
    assert stored.metadata.labels["llmops.dev/run"] == "default"
    listed = client.BatchV1Api(api).list_namespaced_job(ns).items
    assert [j.metadata.name for j in listed] == [job.metadata.name]
    finish(api, job, "Complete", "CompletionsReached", "Reached expected number of succeeded pods")
    status = wait(api, ns, job.metadata.name, timeout_s=30, poll_s=0.05)
    assert status.succeeded and not status.failed


def test_wait_reports_a_failed_job_with_its_reason(tmp_path: Path, kube: tuple[Any, str]) -> None:
    api, ns = kube
    job = job_in(tmp_path, ns)
    submit(api, job)
    finish(
        api, job, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
    )
    status = wait(api, ns, job.metadata.name, timeout_s=30, poll_s=0.05)
    assert status.failed and not status.succeeded
    assert status.reason == "BackoffLimitExceeded"
    assert status.message == ("BackoffLimitExceeded: Job has reached the specified backoff limit")


def test_wait_times_out_with_a_hint(tmp_path: Path, kube: tuple[Any, str]) -> None:
    api, ns = kube
    job = job_in(tmp_path, ns)
    submit(api, job)
    with pytest.raises(JobFailed, match=f"kubectl -n {ns} describe job"):
        wait(api, ns, job.metadata.name, timeout_s=0.3, poll_s=0.05)


def test_a_deleted_job_is_named(tmp_path: Path, kube: tuple[Any, str]) -> None:
    from kubernetes import client

    api, ns = kube
    job = job_in(tmp_path, ns)
    submit(api, job)
    # Background: the default (orphan) waits for a garbage collector this server does not run.
    client.BatchV1Api(api).delete_namespaced_job(
        job.metadata.name, ns, propagation_policy="Background"
    )
    with pytest.raises(JobFailed, match="is gone"):
        wait(api, ns, job.metadata.name, timeout_s=5, poll_s=0.05)


def test_an_invalid_job_is_refused_with_the_field(tmp_path: Path, kube: tuple[Any, str]) -> None:
    api, ns = kube
    job = job_in(tmp_path, ns, backoff_limit=-1)
    with pytest.raises(JobFailed) as refused:
        submit(api, job)
    assert "422" in str(refused.value)
    assert "spec.backoffLimit: Invalid value: -1" in str(refused.value)


def test_no_cluster_configured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(JobFailed, match="no Kubernetes cluster configured"):
        api_client()
