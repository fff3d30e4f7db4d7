"""KServe target against a real Kubernetes API server (tests/envtest.py) with KServe's own
CRDs installed by server-side apply: apply, no-op, update, schema and strict-field refusals,
another field manager's conflict, Ready judged for the applied generation or revision,
canary, rollback, RawDeployment and Serverless, delete.

The API server runs no controllers, so `Controller` below plays KServe's: it reads the
InferenceService and patches its status subresource the way KServe reports a rollout
(Serverless: a new Knative revision per pod-template change; RawDeployment: observedGeneration).
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from controller.api.deployment import DeploymentSpec
from runners.deploy import kserve_manifests, kserve_rollout
from runners.deploy.kserve_rollout import FieldConflict, RolloutFailed
from runners.deploy.release import DeployError, Release
from tests import envtest

NOW = "2026-11-25T12:00:00Z"
NAME = "support-assistant"


@pytest.fixture
def kube() -> Iterator[tuple[Any, str]]:
    """The API server's client and a fresh namespace for the test."""
    api = envtest.cluster().client()
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    envtest.ensure_namespace(api, namespace)
    yield api, namespace


def release(namespace: str, version: str, **kserve_fields: Any) -> Release:
    target = {
        "namespace": namespace,
        "min_replicas": 1,
        "max_replicas": 3,
        "storage_uri": f"pvc://llmops-models/support-assistant/{version}",
    }
    spec = DeploymentSpec(
        model="support-assistant@champion", target="kserve", kserve=target | kserve_fields
    ).model_dump()
    return Release(NAME, f"support-assistant@{version}", spec, ["Hello?"])


def read(api: Any, namespace: str, plural: str = "inferenceservices", name: str = NAME) -> dict:
    version = "v1beta1" if plural == "inferenceservices" else "v1alpha1"
    return client.CustomObjectsApi(api).get_namespaced_custom_object(
        "serving.kserve.io", version, namespace, plural, name
    )


def patch_status(api: Any, namespace: str, status: dict[str, Any], name: str = NAME) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        "serving.kserve.io", "v1beta1", namespace, "inferenceservices", name, {"status": status}
    )


class Controller:
    """KServe's controller, played on the real API server by patching status.

    `outcome(isvc)` decides how the applied spec ends: "ready", "load-failed" or "stuck".
    `delay_s` holds each new generation back before reporting it.
    """

    def __init__(
        self,
        api: Any,
        namespace: str,
        outcome: Callable[[dict[str, Any]], str] | None = None,
        delay_s: float = 0.0,
        name: str = NAME,
    ) -> None:
        self.api, self.namespace, self.name = api, namespace, name
        self.outcome = outcome or (lambda isvc: "ready")
        self.delay_s = delay_s
        self.seen: dict[str, Any] = {"generation": 0, "template": None, "count": 0}
        self.ready: str | None = None
        self.rolled: str | None = None
        self.prev: str | None = None
        self.reported: list[tuple[int, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.first_seen: dict[int, float] = {}
        try:  # carry on from what an earlier controller reported
            isvc = read(api, namespace, name=name)
        except client.ApiException:
            return
        predictor = ((isvc.get("status") or {}).get("components") or {}).get("predictor") or {}
        created = predictor.get("latestCreatedRevision")
        self.seen.update(
            generation=isvc["metadata"]["generation"],
            template=(isvc["metadata"].get("annotations") or {}).get(
                kserve_manifests.ANNOTATION_TEMPLATE
            ),
            count=int(created.rsplit("-", 1)[1]) if created else 0,
        )
        self.ready = predictor.get("latestReadyRevision")
        self.rolled = predictor.get("latestRolledoutRevision")
        self.prev = predictor.get("previousRolledoutRevision")

    def __enter__(self) -> Controller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.step()
            except client.ApiException as err:
                if err.status not in (404, 409):
                    raise
            self.stop.wait(0.05)

    def step(self) -> None:
        isvc = read(self.api, self.namespace, name=self.name)
        generation = isvc["metadata"]["generation"]
        if generation == self.seen["generation"]:
            return
        since = self.first_seen.setdefault(generation, time.monotonic())
        if time.monotonic() - since < self.delay_s:
            return
        annotations = isvc["metadata"].get("annotations") or {}
        raw = annotations.get(kserve_manifests.ANNOTATION_MODE) == "RawDeployment"
        template = annotations.get(kserve_manifests.ANNOTATION_TEMPLATE)
        if template != self.seen["template"]:
            self.seen["count"] += 1
        self.seen.update(generation=generation, template=template)
        revision = None if raw else f"{self.name}-predictor-{self.seen['count']:05d}"
        outcome = self.outcome(isvc)
        if outcome == "stuck":
            status = self.status(isvc, revision, "Unknown", "RevisionMissing", raw)
        elif outcome == "load-failed":
            status = self.status(isvc, revision, "False", "RevisionFailed", raw)
            status["modelStatus"] = {
                "transitionStatus": "BlockedByFailedLoad",
                "lastFailureInfo": {
                    "reason": "ModelLoadFailed",
                    "message": "OSError: /mnt/models does not appear to have a file named "
                    "config.json.",
                },
            }
        else:
            status = self.status(isvc, revision, "True", None, raw)
        patch_status(self.api, self.namespace, status, self.name)
        self.reported.append((generation, time.monotonic()))

    def status(
        self, isvc: dict, revision: str | None, ready: str, reason: str | None, raw: bool
    ) -> dict:
        condition = {"type": "Ready", "status": ready, "lastTransitionTime": NOW}
        if reason:
            condition["reason"] = reason
        status: dict[str, Any] = {
            "conditions": [condition],
            "url": f"http://{self.name}.{self.namespace}.example.com",
            "modelStatus": {"transitionStatus": "UpToDate" if ready == "True" else "InProgress"},
        }
        if raw:
            status["observedGeneration"] = isvc["metadata"]["generation"]
            status["deploymentMode"] = "RawDeployment"
            return status
        if ready == "True":
            canary = isvc["spec"]["predictor"].get("canaryTrafficPercent")
            self.ready = revision
            if revision != self.rolled and (canary in (None, 100) or not self.rolled):
                self.prev, self.rolled = self.rolled, revision
        traffic = [{"revisionName": self.rolled, "percent": 100, "latestRevision": True}]
        if self.ready != self.rolled and self.rolled:
            canary = isvc["spec"]["predictor"]["canaryTrafficPercent"]
            traffic = [
                {"revisionName": self.ready, "percent": canary, "latestRevision": True},
                {"revisionName": self.rolled, "percent": 100 - canary, "latestRevision": False},
            ]
        status["components"] = {
            "predictor": {
                "latestCreatedRevision": revision,
                "latestReadyRevision": self.ready,
                "latestRolledoutRevision": self.rolled,
                "previousRolledoutRevision": self.prev,
                "traffic": traffic if self.rolled else [],
            }
        }
        return status


def go(api: Any, rel: Release, **options: Any) -> kserve_rollout.Rollout:
    options.setdefault("timeout_s", 30)
    return kserve_rollout.rollout(
        api, kserve_manifests.render_manifests(rel), poll_s=0.05, **options
    )


def test_apply_creates_then_a_second_apply_changes_nothing(kube: tuple[Any, str]) -> None:
    api, ns = kube
    with Controller(api, ns):
        result = go(api, release(ns, "1"))
    runtime_manifest, isvc_manifest = kserve_manifests.render_manifests(release(ns, "1"))
    isvc = read(api, ns)
    runtime = read(api, ns, "servingruntimes", runtime_manifest["metadata"]["name"])
    # Stored as sent: the server's schema kept every field (nothing silently dropped).
    assert isvc["spec"] == isvc_manifest["spec"]
    assert runtime["spec"]["containers"] == runtime_manifest["spec"]["containers"]
    managers = {(m["manager"], m["operation"]) for m in isvc["metadata"]["managedFields"]}
    assert ("llmops", "Apply") in managers
    assert result.model_version == "support-assistant@1"
    assert result.revision == f"{NAME}-predictor-00001"
    assert result.url == f"http://{NAME}.{ns}.example.com" and result.ready
    versions = (isvc["metadata"]["resourceVersion"], runtime["metadata"]["resourceVersion"])

    again = go(api, release(ns, "1"), timeout_s=5)  # no controller: nothing to wait for
    assert again.revision == result.revision
    after = read(api, ns)
    runtime_after = read(api, ns, "servingruntimes", runtime_manifest["metadata"]["name"])
    assert (after["metadata"]["resourceVersion"], runtime_after["metadata"]["resourceVersion"]) == (
        versions
    )
    assert after["metadata"]["generation"] == 1


def test_a_spec_change_updates_it_and_a_canary_splits_traffic(kube: tuple[Any, str]) -> None:
    api, ns = kube
    with Controller(api, ns):
        go(api, release(ns, "1"))
        result = go(api, release(ns, "2", canary_traffic_percent=10))
    isvc = read(api, ns)
    assert isvc["metadata"]["generation"] == 2
    assert (
        isvc["metadata"]["annotations"][kserve_manifests.ANNOTATION_VERSION]
        == "support-assistant@2"
    )
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert isvc["spec"]["predictor"]["model"]["storageUri"].endswith("/2")
    assert result.model_version == "support-assistant@2"
    assert result.revision == f"{NAME}-predictor-00002"
    assert {t["revisionName"]: t["percent"] for t in result.traffic} == {
        f"{NAME}-predictor-00002": 10,
        f"{NAME}-predictor-00001": 90,
    }


def test_an_invalid_field_is_refused_by_the_schema_with_its_name(kube: tuple[Any, str]) -> None:
    api, ns = kube
    _, isvc = kserve_manifests.render_manifests(release(ns, "1"))
    off_enum = copy.deepcopy(isvc)
    off_enum["spec"]["predictor"]["scaleMetric"] = "gpu"
    with pytest.raises(DeployError) as refused:
        kserve_rollout.apply(api, off_enum)
    assert str(refused.value).startswith(f"cannot apply InferenceService {ns}/{NAME}: 422 ")
    assert 'spec.predictor.scaleMetric: Unsupported value: "gpu"' in str(refused.value)
    wrong_type = copy.deepcopy(isvc)
    wrong_type["spec"]["predictor"]["minReplicas"] = "two"
    with pytest.raises(DeployError, match=r"\.spec\.predictor\.minReplicas: expected numeric"):
        kserve_rollout.apply(api, wrong_type)
    unknown = copy.deepcopy(isvc)
    unknown["spec"]["predictor"]["model"]["storageUrl"] = "pvc://typo"
    with pytest.raises(DeployError) as undeclared:
        kserve_rollout.apply(api, unknown)
    assert ".spec.predictor.model.storageUrl: field not declared in schema" in str(undeclared.value)
    assert "does not fit the InferenceService/ServingRuntime schema" in str(undeclared.value)
    # Nothing was stored.
    with pytest.raises(client.ApiException) as missing:
        read(api, ns)
    assert missing.value.status == 404


def test_another_managers_change_is_a_conflict_not_overwritten(kube: tuple[Any, str]) -> None:
    api, ns = kube
    with Controller(api, ns):
        go(api, release(ns, "1"))
    # Someone scales it by hand, with their own field manager.
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        "serving.kserve.io",
        "v1beta1",
        ns,
        "inferenceservices",
        NAME,
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": NAME, "namespace": ns},
            "spec": {"predictor": {"minReplicas": 5}},
        },
        field_manager="ops-console",
        force=True,
        _content_type=kserve_rollout.APPLY_PATCH,
    )
    with pytest.raises(FieldConflict) as conflict:
        go(api, release(ns, "1"), timeout_s=5)
    message = str(conflict.value)
    assert 'conflict with "ops-console"' in message and ".spec.predictor.minReplicas" in message
    assert "kserve.force_conflicts" in message
    assert read(api, ns)["spec"]["predictor"]["minReplicas"] == 5
    # The spec may say to take the fields.
    with Controller(api, ns):
        go(api, release(ns, "1"), force=True)
    assert read(api, ns)["spec"]["predictor"]["minReplicas"] == 1


@pytest.mark.parametrize("mode", ["RawDeployment", "Serverless"])
def test_ready_from_an_older_generation_is_not_the_new_rollout(
    kube: tuple[Any, str], mode: str
) -> None:
    api, ns = kube
    with Controller(api, ns):
        go(api, release(ns, "1", deployment_mode=mode))
    assert read(api, ns)["status"]["conditions"][0]["status"] == "True"
    # Nothing reports on the new spec: the old Ready is not taken as its own.
    with pytest.raises(RolloutFailed) as failure:
        go(api, release(ns, "2", deployment_mode=mode), timeout_s=0.5)
    assert failure.value.reason == "Timeout"
    if mode == "RawDeployment":
        assert "status describes generation 1, not the applied 2" in str(failure.value)
    else:
        assert f"the new revision is not created yet (latest is {NAME}-predictor-00001)" in str(
            failure.value
        )
    # With a controller that reports the new generation after a while, the rollout waits.
    with Controller(api, ns, delay_s=1.0) as controller:
        start = time.monotonic()
        result = go(api, release(ns, "3", deployment_mode=mode))
        done = time.monotonic()
    generation = read(api, ns)["metadata"]["generation"]
    reported = dict(controller.reported)
    assert generation in reported and start < reported[generation] <= done
    assert result.model_version == "support-assistant@3"
    if mode == "RawDeployment":
        assert result.revision is None and result.deployment_mode == "RawDeployment"


def test_raw_deployment_has_no_canary(kube: tuple[Any, str]) -> None:
    _, ns = kube
    with pytest.raises(DeployError, match="canary_traffic_percent needs KServe's Serverless"):
        kserve_manifests.render_manifests(
            release(ns, "1", deployment_mode="RawDeployment", canary_traffic_percent=10)
        )


@pytest.mark.parametrize("mode", ["RawDeployment", "Serverless"])
def test_a_failed_update_is_rolled_back(kube: tuple[Any, str], mode: str) -> None:
    api, ns = kube

    def outcome(isvc: dict[str, Any]) -> str:
        uri = isvc["spec"]["predictor"]["model"]["storageUri"]
        return "load-failed" if uri.endswith("/broken") else "ready"

    with Controller(api, ns, outcome):
        go(api, release(ns, "1", deployment_mode=mode))
        good = read(api, ns)
        bad = release(
            ns, "2", storage_uri="pvc://m/broken", image="reg.example/x:2", deployment_mode=mode
        )
        with pytest.raises(RolloutFailed) as failure:
            go(api, bad)
    err = failure.value
    assert err.rolled_back and err.restored_version == "support-assistant@1"
    assert err.reason == "ModelLoadFailed" and "config.json" in str(err)
    assert "Rolled back to support-assistant@1, which is Ready again" in str(err)
    live = read(api, ns)
    assert live["spec"] == good["spec"]
    assert (
        live["metadata"]["annotations"][kserve_manifests.ANNOTATION_VERSION]
        == "support-assistant@1"
    )
    # The failed version's runtime is pruned; the good one stays.
    runtimes = client.CustomObjectsApi(api).list_namespaced_custom_object(
        "serving.kserve.io", "v1alpha1", ns, "servingruntimes"
    )["items"]
    assert [r["metadata"]["name"] for r in runtimes] == [
        good["spec"]["predictor"]["model"]["runtime"]
    ]


def test_a_failed_first_rollout_has_nothing_to_roll_back(kube: tuple[Any, str]) -> None:
    api, ns = kube
    with (
        Controller(api, ns, lambda isvc: "load-failed"),
        pytest.raises(RolloutFailed, match="this was its first rollout") as failure,
    ):
        go(api, release(ns, "1"))
    assert not failure.value.rolled_back
    assert f"kubectl -n {ns} describe inferenceservice {NAME}" in str(failure.value)


def test_delete_removes_the_service_and_its_runtimes(kube: tuple[Any, str]) -> None:
    api, ns = kube
    with Controller(api, ns):
        go(api, release(ns, "1"))
    runtime = kserve_manifests.render_manifests(release(ns, "1"))[0]["metadata"]["name"]
    assert kserve_rollout.delete(api, ns, NAME) == [
        f"InferenceService/{ns}/{NAME}",
        f"ServingRuntime/{ns}/{runtime}",
    ]
    assert kserve_rollout.delete(api, ns, NAME) == []
    assert kserve_rollout.status(api, ns, NAME) is None


def test_an_unreachable_api_server_is_named() -> None:
    api = kserve_rollout.api_client("http://127.0.0.1:9")
    api.configuration.retries = 0
    with pytest.raises(DeployError, match="cannot reach the Kubernetes API at http://127.0.0.1:9"):
        kserve_rollout.rollout(
            api, kserve_manifests.render_manifests(release("llm", "1")), timeout_s=1, poll_s=0.01
        )
