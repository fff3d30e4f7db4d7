"""Runner `deploy`, target kserve, rollout: apply the rendered manifests
(kserve_manifests.py) to a cluster, wait for Ready, roll back, read status and delete.

Manifests are applied by server-side apply (field manager "llmops", strict field validation,
no force: a field another manager set is a conflict that is reported, not overwritten), and
the rollout waits for the InferenceService's Ready condition, judged only once the status
describes the applied spec (Serverless: a new Knative revision; RawDeployment:
status.observedGeneration). A rollout that fails (Ready False, a failed model load, or no Ready
in time) re-applies the InferenceService that was Ready before, waits for it, and reports both.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from runners import kube
from runners.deploy.kserve_manifests import (
    ANNOTATION_MODE,
    ANNOTATION_TEMPLATE,
    ANNOTATION_VERSION,
    GROUP,
    ISVC_VERSION,
    LABEL_DEPLOYMENT,
    RAW_MODES,
    RUNTIME_VERSION,
)
from runners.deploy.release import DeployError

PLURALS = {"InferenceService": "inferenceservices", "ServingRuntime": "servingruntimes"}
FIELD_MANAGER = "llmops"
APPLY_PATCH = "application/apply-patch+yaml"
OWN_PREFIXES = ("llmops.dev/", "app.kubernetes.io/")
# KServe's modelStatus.transitionStatus values that no amount of waiting will fix.
TERMINAL_TRANSITIONS = ("BlockedByFailedLoad", "InvalidSpec")


class RolloutFailed(DeployError):
    """The new version did not become Ready; says why and whether the old one is back."""

    def __init__(
        self, message: str, reason: str, rolled_back: bool, restored_version: str | None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.rolled_back = rolled_back
        self.restored_version = restored_version


class FieldConflict(DeployError):
    """Another field manager owns fields llmops applies with different values."""


class _NotReady(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Rollout:
    """Where a ready InferenceService stands, from its status."""

    namespace: str
    name: str
    model_version: str | None
    url: str | None
    revision: str | None
    previous_revision: str | None
    traffic: list[dict[str, Any]] = field(default_factory=list)
    ready: bool = True
    deployment_mode: str | None = None


def api_client(host: str | None = None) -> client.ApiClient:
    """The cluster from the pod's service account or the kube config; `host` for tests."""
    try:
        return kube.api_client(host)
    except kube.ClusterUnavailable as err:
        raise DeployError(str(err)) from err


def _api_error(err: Exception, what: str, api: client.ApiClient) -> DeployError:
    if not isinstance(err, ApiException):
        return DeployError(
            f"cannot reach the Kubernetes API at {api.configuration.host} to {what}: {err}"
        )
    try:
        detail = json.loads(err.body or "{}").get("message") or err.reason
    except ValueError:
        detail = err.body or err.reason
    hint = {
        401: "the credentials were refused; refresh the kube config",
        403: "the account needs RBAC rights on serving.kserve.io inferenceservices and "
        "servingruntimes (get, list, patch, delete)",
        404: "is KServe installed? its serving.kserve.io CRDs are missing",
        422: "the cluster's KServe CRD schema refuses the named field",
    }.get(err.status or 0, "")
    if "failed to create typed patch object" in str(detail):
        # Server-side apply checks the object against the CRD's schema before admission.
        hint = (
            "the manifest does not fit the InferenceService/ServingRuntime schema installed "
            "on the cluster (the named field); is its KServe older than llmops expects?"
        )
    return DeployError(f"cannot {what}: {err.status} {detail}" + (f"; {hint}" if hint else ""))


def _custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def _where(manifest: dict[str, Any]) -> tuple[str, str, str, str, str]:
    group, version = manifest["apiVersion"].split("/")
    meta = manifest["metadata"]
    return group, version, meta["namespace"], PLURALS[manifest["kind"]], meta["name"]


def apply(api: client.ApiClient, manifest: dict[str, Any], force: bool = False) -> dict[str, Any]:
    """Server-side apply of one object; returns the object as the server stored it.

    Without `force` a field that another manager set to another value is a conflict, raised
    as FieldConflict naming the manager and the fields, and nothing is changed.
    """
    group, version, namespace, plural, name = _where(manifest)
    what = f"{manifest['kind']} {namespace}/{name}"
    try:
        response = _custom(api).patch_namespaced_custom_object(
            group,
            version,
            namespace,
            plural,
            name,
            body=manifest,
            field_manager=FIELD_MANAGER,
            force=force,
            # Unknown fields are errors rather than silently dropped.
            field_validation="Strict",
            _content_type=APPLY_PATCH,
            # kubernetes 37 maps only a 200 answer to an object; an apply that creates the
            # object answers 201, which it would return as None.
            _preload_content=False,
        )
        return json.loads(response.data)
    except ApiException as err:
        if err.status == 409:
            try:
                detail = json.loads(err.body or "{}").get("message") or err.reason
            except ValueError:
                detail = err.body or err.reason
            raise FieldConflict(
                f"cannot apply {what}: another field manager changed fields llmops sets "
                f"({detail}); llmops does not overwrite them. Undo that change (or move it "
                "into the Deployment spec), or set kserve.force_conflicts: true in the "
                "Deployment spec to let llmops take them"
            ) from err
        raise _api_error(err, f"apply {what}", api) from err
    except Exception as err:
        raise _api_error(err, f"apply {what}", api) from err


def _get(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _custom(api).get_namespaced_custom_object(
            GROUP, ISVC_VERSION, namespace, PLURALS["InferenceService"], name
        )
    except ApiException as err:
        if err.status == 404 and "could not find the requested resource" not in (err.body or ""):
            return None
        raise _api_error(err, f"read InferenceService {namespace}/{name}", api) from err
    except Exception as err:
        raise _api_error(err, f"read InferenceService {namespace}/{name}", api) from err


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition
    return None


def _predictor(obj: dict[str, Any]) -> dict[str, Any]:
    return ((obj.get("status") or {}).get("components") or {}).get("predictor") or {}


def _is_ready(obj: dict[str, Any] | None) -> bool:
    ready = _condition(obj or {}, "Ready")
    return bool(ready and ready.get("status") == "True")


def _own(mapping: dict[str, str] | None) -> dict[str, str]:
    return {k: v for k, v in (mapping or {}).items() if k.startswith(OWN_PREFIXES)}


def _as_applied(live: dict[str, Any]) -> dict[str, Any]:
    """What to re-apply to return to a live object: its spec, and llmops' labels.

    The spec carries what KServe's webhook defaulted as well; applying it makes llmops an
    owner of those fields too, which changes none of their values.
    """
    meta = live["metadata"]
    return {
        "apiVersion": live.get("apiVersion", f"{GROUP}/{ISVC_VERSION}"),
        "kind": "InferenceService",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": _own(meta.get("labels")),
            # The deployment mode too: KServe refuses to change it, and dropping the
            # annotation would ask for the cluster's default.
            "annotations": _own(meta.get("annotations"))
            | {k: v for k, v in (meta.get("annotations") or {}).items() if k == ANNOTATION_MODE},
        },
        "spec": copy.deepcopy(live["spec"]),
    }


def _is_raw(obj: dict[str, Any]) -> bool:
    """RawDeployment (no revisions): from the annotation, else the mode KServe reports."""
    mode = (obj["metadata"].get("annotations") or {}).get(ANNOTATION_MODE) or (
        obj.get("status") or {}
    ).get("deploymentMode")
    return mode in RAW_MODES


def _observed(obj: dict[str, Any]) -> int:
    return int((obj.get("status") or {}).get("observedGeneration") or 0)


def _stale_revision(before: dict[str, Any] | None, manifest: dict[str, Any]) -> str | None:
    """The predictor revision whose status says nothing about `manifest`, if one will be
    replaced: KServe copies Knative's status, whose generation is not the
    InferenceService's, so a new revision's name is what shows the new spec was seen."""
    if before is None:
        return None
    old = (before["metadata"].get("annotations") or {}).get(ANNOTATION_TEMPLATE)
    new = manifest["metadata"]["annotations"].get(ANNOTATION_TEMPLATE)
    return _predictor(before).get("latestCreatedRevision") if old != new else None


def wait_ready(
    api: client.ApiClient,
    namespace: str,
    name: str,
    timeout_s: float,
    poll_s: float = 5.0,
    stale_revision: str | None = None,
    generation: int | None = None,
) -> dict[str, Any]:
    """Poll until Ready True; raise _NotReady on Ready False, a failed load or the timeout.

    Conditions are judged only once they describe the applied spec: in RawDeployment mode
    once status.observedGeneration reaches `generation` (the one the apply made); in
    Serverless mode once the predictor has moved past `stale_revision`, since KServe copies
    Knative's observedGeneration there. KServe reports Unknown while a rollout is in
    progress and False when it failed.
    """
    deadline = time.monotonic() + timeout_s
    last = "no status yet"
    while True:
        obj = _get(api, namespace, name)
        if obj is None:
            raise _NotReady("NotFound", f"InferenceService {namespace}/{name} is gone")
        if _is_raw(obj):
            fresh = generation is None or _observed(obj) >= generation
        else:
            fresh = stale_revision is None or (
                _predictor(obj).get("latestCreatedRevision") not in (None, stale_revision)
            )
        if fresh:
            ready = _condition(obj, "Ready") or {}
            if ready.get("status") == "True":
                return obj
            model = (obj.get("status") or {}).get("modelStatus") or {}
            if model.get("transitionStatus") in TERMINAL_TRANSITIONS:
                info = model.get("lastFailureInfo") or {}
                raise _NotReady(
                    info.get("reason") or model["transitionStatus"], info.get("message") or ""
                )
            if ready.get("status") == "False":
                raise _NotReady(ready.get("reason") or "NotReady", ready.get("message") or "")
            last = ready.get("reason") or ready.get("message") or "Ready is Unknown"
        elif _is_raw(obj):
            last = (
                f"status describes generation {_observed(obj) or 'none'}, "
                f"not the applied {generation}"
            )
        else:
            last = f"the new revision is not created yet (latest is {stale_revision})"
        if time.monotonic() >= deadline:
            raise _NotReady("Timeout", f"not Ready after {timeout_s:g} s ({last})")
        time.sleep(poll_s)


def summary(obj: dict[str, Any]) -> Rollout:
    predictor = _predictor(obj)
    meta = obj["metadata"]
    return Rollout(
        namespace=meta["namespace"],
        name=meta["name"],
        model_version=(meta.get("annotations") or {}).get(ANNOTATION_VERSION),
        url=(obj.get("status") or {}).get("url"),
        revision=predictor.get("latestReadyRevision"),
        previous_revision=predictor.get("previousRolledoutRevision"),
        traffic=list(predictor.get("traffic") or []),
        ready=_is_ready(obj),
        deployment_mode=(meta.get("annotations") or {}).get(ANNOTATION_MODE)
        or (obj.get("status") or {}).get("deploymentMode"),
    )


def status(api: client.ApiClient, namespace: str, name: str) -> Rollout | None:
    """The live InferenceService's state, or None when there is none (for observe/status)."""
    obj = _get(api, namespace, name)
    return summary(obj) if obj is not None else None


def _runtimes(api: client.ApiClient, namespace: str, deployment: str) -> list[str]:
    try:
        listing = _custom(api).list_namespaced_custom_object(
            GROUP,
            RUNTIME_VERSION,
            namespace,
            PLURALS["ServingRuntime"],
            label_selector=f"{LABEL_DEPLOYMENT}={deployment}",
        )
    except Exception as err:
        raise _api_error(err, f"list ServingRuntimes in {namespace}", api) from err
    return sorted(item["metadata"]["name"] for item in listing.get("items") or [])


def _delete(api: client.ApiClient, kind: str, namespace: str, name: str) -> bool:
    version = ISVC_VERSION if kind == "InferenceService" else RUNTIME_VERSION
    try:
        _custom(api).delete_namespaced_custom_object(GROUP, version, namespace, PLURALS[kind], name)
    except ApiException as err:
        if err.status == 404 and "could not find the requested resource" not in (err.body or ""):
            return False
        raise _api_error(err, f"delete {kind} {namespace}/{name}", api) from err
    except Exception as err:
        raise _api_error(err, f"delete {kind} {namespace}/{name}", api) from err
    return True


def _prune(api: client.ApiClient, namespace: str, deployment: str, keep: set[str]) -> None:
    """Drop this deployment's runtimes that neither the live nor the previous spec names."""
    for name in _runtimes(api, namespace, deployment):
        if name not in keep:
            _delete(api, "ServingRuntime", namespace, name)


def _runtime_of(manifest: dict[str, Any]) -> str | None:
    return manifest["spec"]["predictor"].get("model", {}).get("runtime")


def rollout(
    api: client.ApiClient,
    manifests: list[dict[str, Any]],
    timeout_s: float = 900.0,
    poll_s: float = 5.0,
    force: bool = False,
) -> Rollout:
    """Apply the runtime and the InferenceService, wait for Ready, roll back on failure.

    The rollback target is the InferenceService as it was before, if it was Ready then;
    a canary percentage in the new spec keeps the previous revision serving the rest.
    `force` takes fields another field manager set (server-side apply's force).
    """
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for manifest in manifests:
        by_kind.setdefault(manifest.get("kind", "?"), []).append(manifest)
    if len(by_kind.get("InferenceService", [])) != 1 or set(by_kind) - set(PLURALS):
        raise DeployError(
            "rollout takes ServingRuntimes and exactly one InferenceService "
            f"(got {sorted(m.get('kind', '?') for m in manifests)}); use render_manifests"
        )
    (isvc,) = by_kind["InferenceService"]
    namespace, name = isvc["metadata"]["namespace"], isvc["metadata"]["name"]
    deployment = (isvc["metadata"].get("labels") or {}).get(LABEL_DEPLOYMENT, name)
    before = _get(api, namespace, name)
    previous = _as_applied(before) if before is not None and _is_ready(before) else None
    for runtime in by_kind.get("ServingRuntime", []):
        apply(api, runtime, force)
    stored = apply(api, isvc, force)
    generation = (stored.get("metadata") or {}).get("generation")
    try:
        live = wait_ready(
            api, namespace, name, timeout_s, poll_s, _stale_revision(before, isvc), generation
        )
    except _NotReady as failure:
        raise _roll_back(api, isvc, before, previous, failure, timeout_s, poll_s) from None
    keep = {_runtime_of(isvc)} | ({_runtime_of(previous)} if previous else set())
    _prune(api, namespace, deployment, {k for k in keep if k})
    return summary(live)


def _roll_back(
    api: client.ApiClient,
    failed: dict[str, Any],
    before: dict[str, Any] | None,
    previous: dict[str, Any] | None,
    failure: _NotReady,
    timeout_s: float,
    poll_s: float,
) -> RolloutFailed:
    namespace, name = failed["metadata"]["namespace"], failed["metadata"]["name"]
    version = failed["metadata"]["annotations"].get(ANNOTATION_VERSION)
    head = (
        f"InferenceService {namespace}/{name} ({version}) did not become Ready: "
        f"{failure.reason}" + (f": {failure.message}" if failure.message else "")
    )
    look = f"see 'kubectl -n {namespace} describe inferenceservice {name}'"
    if previous is None:
        why = "it was not Ready either" if before is not None else "this was its first rollout"
        return RolloutFailed(
            f"{head}. Nothing to roll back to ({why}); {look}", failure.reason, False, None
        )
    old_version = previous["metadata"]["annotations"].get(ANNOTATION_VERSION)
    failed_view = _get(api, namespace, name) or before
    stored = apply(api, previous, force=True)  # the spec llmops had applied before
    generation = (stored.get("metadata") or {}).get("generation")
    try:
        wait_ready(
            api,
            namespace,
            name,
            timeout_s,
            poll_s,
            _stale_revision(failed_view, previous),
            generation,
        )
    except _NotReady as again:
        return RolloutFailed(
            f"{head}. Rolling back to {old_version} failed too: {again}; {look}",
            failure.reason,
            False,
            None,
        )
    keep = _runtime_of(previous)
    deployment = (failed["metadata"].get("labels") or {}).get(LABEL_DEPLOYMENT, name)
    _prune(api, namespace, deployment, {keep} if keep else set())
    return RolloutFailed(
        f"{head}. Rolled back to {old_version}, which is Ready again; {look}",
        failure.reason,
        True,
        old_version,
    )


def delete(api: client.ApiClient, namespace: str, deployment: str) -> list[str]:
    """Delete the deployment's InferenceService and runtimes; returns what was deleted."""
    gone = []
    if _delete(api, "InferenceService", namespace, deployment):
        gone.append(f"InferenceService/{namespace}/{deployment}")
    for runtime in _runtimes(api, namespace, deployment):
        if _delete(api, "ServingRuntime", namespace, runtime):
            gone.append(f"ServingRuntime/{namespace}/{runtime}")
    return gone
