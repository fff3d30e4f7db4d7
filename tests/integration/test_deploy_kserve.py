"""KServe target: server-side apply, waiting for Ready, canary, rollback and delete, against an
API server on 127.0.0.1 that answers the calls made as Kubernetes and KServe document them.

The stand-in keeps custom objects in memory and plays KServe's controller: a change to the
predictor's pods makes a new Knative revision; for a few reads the status is still the old
one, then it is in progress (Ready Unknown), then Ready, or failed as KServe reports a failed
model load, or stuck.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from controller.api.deployment import DeploymentSpec
from runners.deploy import kserve
from runners.deploy.kserve import RolloutFailed
from runners.deploy.release import DeployError, Release
from tests.servers import serve

NOW = "2026-11-25T12:00:00Z"


def not_found(message: str) -> tuple[int, dict[str, Any]]:
    return 404, {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "NotFound",
        "code": 404,
    }


class FakeKServe:
    """serving.kserve.io custom objects with a simulated KServe controller.

    `outcome(isvc)` decides how a new revision ends: "ready", "load-failed",
    "ingress-failed" or "stuck". `lag` reads show the status from before an apply;
    `progress` reads show the new revision in progress.
    """

    def __init__(
        self,
        outcome: Callable[[dict[str, Any]], str] | None = None,
        lag: int = 1,
        progress: int = 2,
        installed: bool = True,
    ) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.outcome = outcome or (lambda isvc: "ready")
        self.lag = lag
        self.progress = progress
        self.installed = installed
        self.revisions: dict[tuple[str, str], dict[str, Any]] = {}
        self.lock = threading.Lock()

    # --- the simulated KServe controller -------------------------------------------

    @staticmethod
    def _pods(isvc: dict[str, Any]) -> Any:
        predictor = {
            k: v for k, v in isvc["spec"]["predictor"].items() if k != "canaryTrafficPercent"
        }
        return predictor, isvc["metadata"].get("annotations")

    def _applied_isvc(self, key: tuple[str, str], before: Any, obj: dict[str, Any]) -> None:
        track = self.revisions.setdefault(
            key,
            {
                "count": 0,
                "pending": None,
                "failed": False,
                "rolled": None,
                "prev": None,
                "ready": None,
            },
        )
        if before is not None and self._pods(before) == self._pods(obj):
            return  # routing only: Knative keeps the revision
        track["count"] += 1
        name = f"{key[1]}-predictor-{track['count']:05d}"
        track["pending"] = {"revision": name, "reads": 0}
        track["failed"] = False

    def _status(self, key: tuple[str, str], obj: dict[str, Any]) -> None:
        track = self.revisions[key]
        pending = track["pending"]
        if pending is not None:
            pending["reads"] += 1
            if pending["reads"] <= self.lag:
                return
            revision = pending["revision"]
            if pending["reads"] <= self.lag + self.progress:
                obj["status"] = self._in_progress(obj, track, revision)
                return
            outcome = self.outcome(obj)
            if outcome == "stuck":
                obj["status"] = self._in_progress(obj, track, revision)
                return
            track["pending"] = None
            if outcome != "ready":
                # Knative keeps serving the last ready revision; the status stays failed.
                obj["status"] = self._failed(obj, track, revision, outcome)
                track["failed"] = True
                return
            track["ready"] = revision
        if track["ready"] is not None and not track["failed"]:
            obj["status"] = self._ready(obj, track)

    def _components(self, track: dict[str, Any], created: str) -> dict[str, Any]:
        return {
            "latestCreatedRevision": created,
            "latestReadyRevision": track["ready"],
            "latestRolledoutRevision": track["rolled"],
            "previousRolledoutRevision": track["prev"],
            "traffic": [{"revisionName": track["rolled"], "percent": 100, "latestRevision": True}]
            if track["rolled"]
            else [],
        }

    def _in_progress(self, obj: dict[str, Any], track: dict[str, Any], rev: str) -> dict:
        status = copy.deepcopy(obj.get("status") or {})
        status["conditions"] = [
            {
                "type": "Ready",
                "status": "Unknown",
                "reason": "RevisionMissing",
                "message": f'Configuration "{rev[: -len("-00001")]}" is waiting for a '
                "Revision to become ready.",
                "lastTransitionTime": NOW,
            }
        ]
        status.setdefault("components", {})["predictor"] = self._components(track, rev)
        status["modelStatus"] = {
            "transitionStatus": "InProgress",
            "states": {"activeModelState": "Pending", "targetModelState": "Loading"},
        }
        return status

    def _failed(self, obj: dict[str, Any], track: dict[str, Any], rev: str, how: str) -> dict:
        status = copy.deepcopy(obj.get("status") or {})
        status.setdefault("components", {})["predictor"] = self._components(track, rev)
        if how == "load-failed":
            message = (
                f'Revision "{rev}" failed with message: Container failed with: '
                "OSError: /mnt/models does not appear to have a file named config.json."
            )
            reason = "RevisionFailed"
            status["modelStatus"] = {
                "transitionStatus": "BlockedByFailedLoad",
                "states": {"activeModelState": "Loaded", "targetModelState": "FailedToLoad"},
                "lastFailureInfo": {
                    "reason": "ModelLoadFailed",
                    "message": message,
                    "modelRevisionName": rev,
                },
            }
        else:
            reason, message = "IngressNotConfigured", "Ingress has not yet been reconciled."
        status["conditions"] = [
            {
                "type": "Ready",
                "status": "False",
                "reason": reason,
                "message": message,
                "lastTransitionTime": NOW,
            }
        ]
        return status

    def _ready(self, obj: dict[str, Any], track: dict[str, Any]) -> dict[str, Any]:
        revision = track["ready"]
        canary = obj["spec"]["predictor"].get("canaryTrafficPercent")
        if revision != track["rolled"] and (canary is None or canary == 100 or not track["rolled"]):
            track["prev"], track["rolled"] = track["rolled"], revision
        components = self._components(track, revision)
        if revision != track["rolled"]:
            components["traffic"] = [
                {
                    "revisionName": revision,
                    "percent": canary,
                    "latestRevision": True,
                    "tag": "latest",
                },
                {
                    "revisionName": track["rolled"],
                    "percent": 100 - canary,
                    "latestRevision": False,
                    "tag": "prev",
                },
            ]
        name, namespace = obj["metadata"]["name"], obj["metadata"]["namespace"]
        return {
            "url": f"http://{name}.{namespace}.example.com",
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": NOW}
                for t in ("IngressReady", "PredictorReady", "Ready")
            ],
            "components": {"predictor": components},
            "modelStatus": {
                "transitionStatus": "UpToDate",
                "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"},
            },
        }

    # --- the API server ------------------------------------------------------------

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

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

            def _handle(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                record = {
                    "method": self.command,
                    "path": url.path,
                    "query": query,
                    "content_type": self.headers.get("Content-Type"),
                    "body": yaml.safe_load(raw) if raw else None,
                }
                with fake.lock:
                    fake.requests.append(record)
                    status, body = fake.answer(record)
                self._send(status, body)

            do_GET = do_PATCH = do_DELETE = _handle

        return Handler

    def answer(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        parts = request["path"].strip("/").split("/")
        # /apis/serving.kserve.io/{version}/namespaces/{ns}/{plural}[/{name}]
        if (
            not self.installed
            or parts[:2] != ["apis", "serving.kserve.io"]
            or len(parts) not in (6, 7)
            or parts[3] != "namespaces"
            or parts[5] not in ("inferenceservices", "servingruntimes")
        ):
            return not_found("the server could not find the requested resource")
        version, namespace, plural = parts[2], parts[4], parts[5]
        name = parts[6] if len(parts) == 7 else None
        kind = "InferenceService" if plural == "inferenceservices" else "ServingRuntime"
        key = (plural, namespace, name or "")
        method = request["method"]
        if method == "GET" and name is None:
            selector = request["query"].get("labelSelector", "")
            wanted = dict(pair.split("=", 1) for pair in selector.split(",") if pair)
            items = [
                obj
                for (p, ns, _), obj in sorted(self.objects.items())
                if p == plural
                and ns == namespace
                and wanted.items() <= (obj["metadata"].get("labels") or {}).items()
            ]
            return 200, {
                "apiVersion": f"serving.kserve.io/{version}",
                "kind": f"{kind}List",
                "metadata": {"resourceVersion": "100"},
                "items": items,
            }
        if name is None:
            return 405, {"kind": "Status", "code": 405, "reason": "MethodNotAllowed"}
        if method == "GET":
            obj = self.objects.get(key)
            if obj is None:
                return not_found(f'{plural}.serving.kserve.io "{name}" not found')
            if plural == "inferenceservices":
                self._status((namespace, name), obj)
            return 200, obj
        if method == "DELETE":
            obj = self.objects.pop(key, None)
            if obj is None:
                return not_found(f'{plural}.serving.kserve.io "{name}" not found')
            self.revisions.pop((namespace, name), None)
            return 200, {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Success",
                "details": {"name": name, "group": "serving.kserve.io", "kind": plural},
            }
        return self._apply(request, key, kind)

    def _apply(
        self, request: dict[str, Any], key: tuple[str, str, str], kind: str
    ) -> tuple[int, dict[str, Any]]:
        if request["content_type"] != "application/apply-patch+yaml":
            return 415, {
                "kind": "Status",
                "code": 415,
                "reason": "UnsupportedMediaType",
                "message": "the body of the request was in an unknown format - "
                "accepted media types include: application/json-patch+json, "
                "application/merge-patch+json, application/apply-patch+yaml",
            }
        manager = request["query"].get("fieldManager")
        if not manager:
            return 400, {
                "kind": "Status",
                "code": 400,
                "reason": "BadRequest",
                "message": 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required '
                "value: is required for apply patch",
            }
        body = request["body"]
        meta = body.get("metadata", {})
        if body.get("kind") != kind or (meta.get("namespace"), meta.get("name")) != key[1:]:
            return 400, {
                "kind": "Status",
                "code": 400,
                "reason": "BadRequest",
                "message": "the object does not match the URL",
            }
        before = self.objects.get(key)
        if before is None:
            obj = {
                "apiVersion": body["apiVersion"],
                "kind": kind,
                "metadata": {
                    "name": key[2],
                    "namespace": key[1],
                    "uid": f"uid-{len(self.requests)}",
                    "generation": 1,
                    "resourceVersion": str(len(self.requests)),
                    "creationTimestamp": NOW,
                    "managedFields": [{"manager": manager, "operation": "Apply"}],
                },
                "spec": {},
            }
        else:
            obj = before
            previous = copy.deepcopy(before)
        # One field manager owns every field, so its apply is the object's new content.
        changed = before is None or body["spec"] != obj["spec"]
        obj["metadata"]["labels"] = meta.get("labels") or {}
        obj["metadata"]["annotations"] = meta.get("annotations") or {}
        obj["spec"] = copy.deepcopy(body["spec"])
        if before is not None and changed:
            obj["metadata"]["generation"] += 1
        self.objects[key] = obj
        if kind == "InferenceService":
            self._applied_isvc(key[1:], None if before is None else previous, obj)
        return (201 if before is None else 200), obj


def release(version: str, **kserve_fields: Any) -> Release:
    target = {
        "namespace": "llm",
        "min_replicas": 1,
        "max_replicas": 3,
        "storage_uri": f"pvc://llmops-models/support-assistant/{version}",
    }
    spec = DeploymentSpec(
        model="support-assistant@champion", target="kserve", kserve=target | kserve_fields
    ).model_dump()
    return Release("support-assistant", f"support-assistant@{version}", spec, ["Hello?"])


def broken_storage(isvc: dict[str, Any]) -> str:
    uri = isvc["spec"]["predictor"]["model"]["storageUri"]
    return "load-failed" if uri.endswith("/broken") else "ready"


def patches(fake: FakeKServe, plural: str) -> list[dict[str, Any]]:
    return [r for r in fake.requests if r["method"] == "PATCH" and f"/{plural}/" in r["path"]]


def go(url: str, rel: Release, **options: Any) -> kserve.Rollout:
    return kserve.rollout(
        kserve.api_client(url), kserve.render_manifests(rel), poll_s=0.01, **options
    )


def test_first_rollout_applies_both_objects_and_waits_for_ready() -> None:
    fake = FakeKServe(lag=1, progress=3)
    with serve(fake.handler()) as url:
        result = go(url, release("1"), timeout_s=30)
    runtime, isvc = kserve.render_manifests(release("1"))
    (runtime_patch,) = patches(fake, "servingruntimes")
    (isvc_patch,) = patches(fake, "inferenceservices")
    for patch, manifest in ((runtime_patch, runtime), (isvc_patch, isvc)):
        assert patch["content_type"] == "application/apply-patch+yaml"
        assert patch["query"] == {
            "fieldManager": "llmops",
            "force": "true",
            "fieldValidation": "Strict",
        }
        assert patch["body"] == manifest
    assert fake.requests.index(runtime_patch) < fake.requests.index(isvc_patch)
    assert result.revision == "support-assistant-predictor-00001"
    assert result.model_version == "support-assistant@1"
    assert result.url == "http://support-assistant.llm.example.com"
    assert result.traffic == [
        {
            "revisionName": "support-assistant-predictor-00001",
            "percent": 100,
            "latestRevision": True,
        }
    ]
    reads = [
        r
        for r in fake.requests
        if r["method"] == "GET" and r["path"].endswith("/support-assistant")
    ]
    assert len(reads) >= 1 + 1 + 3 + 1  # before, lag, in progress, ready


def test_update_with_a_canary_waits_for_the_new_revision() -> None:
    """Right after the apply KServe still shows the old revision Ready; that is not the
    new version being ready."""
    fake = FakeKServe(lag=3, progress=2)
    with serve(fake.handler()) as url:
        go(url, release("1"), timeout_s=30)
        result = go(url, release("2", canary_traffic_percent=10), timeout_s=30)
    last = patches(fake, "inferenceservices")[-1]["body"]
    assert last["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert result.model_version == "support-assistant@2"
    assert result.revision == "support-assistant-predictor-00002"
    assert {t["revisionName"]: t["percent"] for t in result.traffic} == {
        "support-assistant-predictor-00002": 10,
        "support-assistant-predictor-00001": 90,
    }


def test_a_routing_only_change_needs_no_new_revision() -> None:
    fake = FakeKServe()
    with serve(fake.handler()) as url:
        go(url, release("1"), timeout_s=30)
        result = go(url, release("1", canary_traffic_percent=20), timeout_s=30)
    assert result.revision == "support-assistant-predictor-00001"
    assert fake.revisions[("llm", "support-assistant")]["count"] == 1


@pytest.mark.parametrize(
    ("how", "reason", "detail"),
    [
        ("load-failed", "ModelLoadFailed", "does not appear to have a file named config.json"),
        ("ingress-failed", "IngressNotConfigured", "Ingress has not yet been reconciled"),
    ],
)
def test_a_failed_update_is_rolled_back(how: str, reason: str, detail: str) -> None:
    fake = FakeKServe(lambda isvc: how if "/broken" in str(isvc) else "ready")
    with serve(fake.handler()) as url:
        go(url, release("1"), timeout_s=30)
        good = copy.deepcopy(fake.objects[("inferenceservices", "llm", "support-assistant")])
        bad = release("2", storage_uri="pvc://llmops-models/broken", image="reg.example/x:2")
        with pytest.raises(RolloutFailed) as failure:
            go(url, bad, timeout_s=30)
        live = kserve.status(kserve.api_client(url), "llm", "support-assistant")
    err = failure.value
    assert err.rolled_back and err.restored_version == "support-assistant@1"
    assert err.reason == reason
    assert str(err).startswith(
        "InferenceService llm/support-assistant (support-assistant@2) did not become Ready: "
        f"{reason}: "
    )
    assert detail in str(err)
    assert "Rolled back to support-assistant@1, which is Ready again" in str(err)
    # The rollback re-applied the spec that was Ready before.
    isvc_patches = patches(fake, "inferenceservices")
    assert len(isvc_patches) == 3
    assert isvc_patches[-1]["body"]["spec"] == good["spec"]
    assert live is not None and live.model_version == "support-assistant@1"
    assert live.revision == "support-assistant-predictor-00003"
    # The new runtime went with the failed version; the old one stays.
    old_runtime = good["spec"]["predictor"]["model"]["runtime"]
    runtimes = [key[2] for key in fake.objects if key[0] == "servingruntimes"]
    assert runtimes == [old_runtime]


def test_a_failed_first_rollout_has_nothing_to_roll_back() -> None:
    fake = FakeKServe(broken_storage)
    broken = release("1", storage_uri="pvc://llmops-models/broken")
    with (
        serve(fake.handler()) as url,
        pytest.raises(RolloutFailed, match="this was its first rollout") as failure,
    ):
        go(url, broken, timeout_s=30)
    assert not failure.value.rolled_back
    assert "kubectl -n llm describe inferenceservice support-assistant" in str(failure.value)
    assert len(patches(fake, "inferenceservices")) == 1


def test_no_ready_in_time_is_a_failure() -> None:
    fake = FakeKServe(lambda isvc: "stuck")
    with serve(fake.handler()) as url, pytest.raises(RolloutFailed) as failure:
        go(url, release("1"), timeout_s=0.2)
    assert failure.value.reason == "Timeout"
    assert "not Ready after 0.2 s (RevisionMissing)" in str(failure.value)


def test_delete_removes_the_service_and_its_runtimes() -> None:
    fake = FakeKServe()
    with serve(fake.handler()) as url:
        go(url, release("1"), timeout_s=30)
        api = kserve.api_client(url)
        runtime = kserve.render_manifests(release("1"))[0]["metadata"]["name"]
        assert kserve.delete(api, "llm", "support-assistant") == [
            "InferenceService/llm/support-assistant",
            f"ServingRuntime/llm/{runtime}",
        ]
        assert kserve.delete(api, "llm", "support-assistant") == []
        assert kserve.status(api, "llm", "support-assistant") is None
    assert fake.objects == {}


def test_a_cluster_without_kserve_is_named() -> None:
    fake = FakeKServe(installed=False)
    with serve(fake.handler()) as url, pytest.raises(DeployError, match="is KServe installed"):
        go(url, release("1"), timeout_s=1)


def test_an_unreachable_api_server_is_named() -> None:
    with serve(FakeKServe().handler()) as url:
        pass  # the port is closed again
    api = kserve.api_client(url)
    api.configuration.retries = 0
    with pytest.raises(DeployError, match=f"cannot reach the Kubernetes API at {url}"):
        kserve.rollout(api, kserve.render_manifests(release("1")), timeout_s=1, poll_s=0.01)
