"""Training as a Kubernetes Job: the rendered manifest, and submit/watch against an API server
on 127.0.0.1 that answers the calls made as the Kubernetes API documents them."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler
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
from tests.servers import serve

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


class FakeBatchApi:
    """In-memory batch/v1 Jobs: create (201, or 409 when it exists) and read status."""

    def __init__(self, outcome: str, polls_before_done: int = 2) -> None:
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.reads: dict[str, int] = {}
        self.outcome = outcome
        self.polls = polls_before_done
        self.lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                api.requests.append(("POST", self.path))
                parts = self.path.strip("/").split("/")
                # /apis/batch/v1/namespaces/{ns}/jobs
                if parts[:3] != ["apis", "batch", "v1"] or parts[5:] != ["jobs"]:
                    self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = (parts[4], body["metadata"]["name"])
                with api.lock:
                    if key in api.jobs:
                        self._send(
                            409,
                            {
                                "kind": "Status",
                                "apiVersion": "v1",
                                "status": "Failure",
                                "reason": "AlreadyExists",
                                "code": 409,
                                "message": f'jobs "{key[1]}" exists',
                            },
                        )
                        return
                    body["metadata"].update(
                        {
                            "uid": "1234",
                            "resourceVersion": "1",
                            "creationTimestamp": "2026-11-25T12:00:00Z",
                        }
                    )
                    body["status"] = {}
                    api.jobs[key] = body
                self._send(201, body)

            def do_GET(self) -> None:
                api.requests.append(("GET", self.path))
                parts = self.path.strip("/").split("/")
                # /apis/batch/v1/namespaces/{ns}/jobs/{name}/status
                key = (parts[4], parts[6]) if len(parts) >= 8 else ("", "")
                job = api.jobs.get(key)
                if job is None or parts[7:] != ["status"]:
                    self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                    return
                count = api.reads[key[1]] = api.reads.get(key[1], 0) + 1
                if count <= api.polls:
                    job["status"] = {"active": 1, "startTime": "2026-11-25T12:00:01Z"}
                elif api.outcome == "Complete":
                    job["status"] = {
                        "succeeded": 1,
                        "conditions": [
                            {
                                "type": "Complete",
                                "status": "True",
                                "lastTransitionTime": "2026-11-25T12:10:00Z",
                            }
                        ],
                    }
                else:
                    job["status"] = {
                        "failed": 3,
                        "conditions": [
                            {
                                "type": "Failed",
                                "status": "True",
                                "reason": "BackoffLimitExceeded",
                                "message": "Job has reached the specified backoff limit",
                                "lastTransitionTime": "2026-11-25T12:10:00Z",
                            }
                        ],
                    }
                self._send(200, job)

        return Handler


def test_submit_is_idempotent_and_wait_sees_completion(tmp_path: Path) -> None:
    from kubernetes import client

    api = FakeBatchApi("Complete")
    with serve(api.handler()) as url:
        k8s = api_client(url)
        job = render_job(
            tmp_path / ".llmops/runs/x/job.json",
            "exp/default",
            DIGEST,
            EXECUTOR,
            tmp_path / ".llmops",
        )
        (tmp_path / ".llmops/runs/x").mkdir(parents=True)
        assert submit(k8s, job) == "created"
        assert submit(k8s, job) == "exists"
        status = wait(k8s, "ml", job.metadata.name, timeout_s=30, poll_s=0.01)
    assert status.succeeded and not status.failed
    assert api.requests[0] == ("POST", "/apis/batch/v1/namespaces/ml/jobs")
    assert len(api.jobs) == 1
    stored = next(iter(api.jobs.values()))
    assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == EXECUTOR["image"]
    assert isinstance(job, client.V1Job)


def test_wait_reports_a_failed_job(tmp_path: Path) -> None:
    api = FakeBatchApi("Failed", polls_before_done=1)
    with serve(api.handler()) as url:
        k8s = api_client(url)
        job = render_job(tmp_path / "job.json", "exp/default", DIGEST, EXECUTOR, tmp_path)
        submit(k8s, job)
        status = wait(k8s, "ml", job.metadata.name, timeout_s=30, poll_s=0.01)
    assert status.failed and "backoff limit" in status.message


def test_wait_times_out_with_a_hint(tmp_path: Path) -> None:
    api = FakeBatchApi("Complete", polls_before_done=10_000)
    with serve(api.handler()) as url:
        k8s = api_client(url)
        job = render_job(tmp_path / "job.json", "exp/default", DIGEST, EXECUTOR, tmp_path)
        submit(k8s, job)
        with pytest.raises(JobFailed, match="kubectl -n ml describe job"):
            wait(k8s, "ml", job.metadata.name, timeout_s=0.05, poll_s=0.01)
