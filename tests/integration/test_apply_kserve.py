"""`llmops apply` with a Deployment on target kserve, against a real Kubernetes API server
(tests/envtest.py, reached through KUBECONFIG as a real cluster would be): apply creates the
InferenceService and waits for Ready (the test plays KServe's controller), `status` reads
it from the API server, an out-of-band delete is drift that the next apply heals, and
removing the spec deletes it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from kubernetes import client

from tests import envtest
from tests.apply_repo import build_repo, git
from tests.integration.test_apply import llmops
from tests.integration.test_deploy_kserve import Controller

DEPLOYMENT = """
apiVersion: llmops/v1
kind: Deployment
metadata: {{name: assistant}}
spec:
  model: assistant@champion
  target: kserve
  smoke_suite: smoke
  kserve:
    namespace: {namespace}
    storage_uri: pvc://llmops-models/assistant
    deployment_mode: RawDeployment
"""


def test_apply_status_drift_heal_and_stop_on_a_real_api_server(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = envtest.cluster()
    api = cluster.client()
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    envtest.ensure_namespace(api, namespace)
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    root = build_repo(tmp_path / "repo", tiny_model, deploy_port=8000)
    spec = root / "specs/deployments/assistant.yaml"
    spec.write_text(DEPLOYMENT.format(namespace=namespace))
    git(root, "commit", "-qam", "serve on kserve")

    custom = client.CustomObjectsApi(api)

    def isvc() -> dict | None:
        try:
            return custom.get_namespaced_custom_object(
                "serving.kserve.io", "v1beta1", namespace, "inferenceservices", "assistant"
            )
        except client.ApiException as err:
            assert err.status == 404
            return None

    with Controller(api, namespace, name="assistant"):
        first = llmops(root, "apply", "--json")
    assert first.returncode == 0, first.stderr
    outputs = {r["address"]: r for r in json.loads(first.stdout)["results"]}
    assert outputs["Deployment/assistant"]["outputs"]["target"] == "kserve"
    assert outputs["Deployment/assistant"]["outputs"]["version"] == "assistant@1"
    live = isvc()
    assert live is not None
    assert live["metadata"]["annotations"]["llmops.dev/model-version"] == "assistant@1"
    assert live["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"

    status = json.loads(llmops(root, "status", "--json").stdout)
    row = next(r for r in status["resources"] if r["address"] == "Deployment/assistant")
    assert row["live"]["running"] and row["live"]["ready"]
    assert row["live"]["version"] == "assistant@1"
    assert llmops(root, "drift").returncode == 0

    # Someone deletes it out of band: drift, a plan that redeploys, an apply that heals it.
    custom.delete_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", namespace, "inferenceservices", "assistant"
    )
    drift = llmops(root, "drift", "--json")
    assert drift.returncode == 3, drift.stdout + drift.stderr
    (found,) = json.loads(drift.stdout)["drift"]
    assert found["actual"] == f"no InferenceService {namespace}/assistant"
    plan = json.loads(llmops(root, "plan", "--json").stdout)
    action = next(a for a in plan["actions"] if a["address"] == "Deployment/assistant")
    assert action["action"] == "deploy" and "InferenceService missing" in action["reason"]
    with Controller(api, namespace, name="assistant"):
        healed = llmops(root, "apply")
    assert healed.returncode == 0, healed.stderr
    assert isvc() is not None
    assert llmops(root, "drift").returncode == 0

    # The spec goes: apply deletes the InferenceService and its runtime.
    spec.unlink()
    git(root, "commit", "-qam", "retire the deployment")
    removed = llmops(root, "apply")
    assert removed.returncode == 0, removed.stderr
    assert isvc() is None
    runtimes = custom.list_namespaced_custom_object(
        "serving.kserve.io", "v1alpha1", namespace, "servingruntimes"
    )["items"]
    assert runtimes == []
