"""Deploy targets, kserve: an InferenceService and ServingRuntime applied with server-side
apply, waited on until Ready and rolled back on failure (runners/deploy/kserve_manifests,
kserve_rollout)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from controller.state.artifacts.serving import SERVE_PREFIX
from controller.state.artifacts.serving import publish as copy_version
from controller.state.lockfile import DeploymentOutputs
from controller.state.paths import STORE_ENV, StatePaths
from controller.state.registry.store import Registry
from controller.targets.base import (
    DeployProgress,
    DeployRequest,
    DriftFinding,
    LiveDeployment,
    Target,
    register,
)
from runners.deploy import images
from runners.deploy.release import DeployError, Release


def _namespace(spec: Mapping[str, Any]) -> str:
    return (spec.get("kserve") or {}).get("namespace") or "default"


class KServeTarget(Target):
    kind = "kserve"
    reads_secret_keys = True

    def deploy(self, request: DeployRequest, progress: DeployProgress) -> DeploymentOutputs:
        """Apply the manifests and wait for Ready: where the new revision serves."""
        from runners.deploy import kserve_manifests, kserve_rollout

        # lazily: the kubernetes client is heavy
        spec = request.spec
        release = with_pushed_image(request.release, request.paths.root)
        release, uri, account = over_store(release, request.paths, publish=True)
        manifests = kserve_manifests.render_manifests(release, uri, account)
        try:
            rollout = kserve_rollout.rollout(
                kserve_rollout.api_client(),
                manifests,
                force=bool(spec["kserve"].get("force_conflicts")),
            )
        except kserve_rollout.RolloutFailed as err:
            raise DeployError(str(err)) from err
        progress.note(f"  {request.name}: {release.model_version} ready at {rollout.url}")
        return DeploymentOutputs(
            version=release.model_version,
            target=self.kind,
            endpoint=rollout.url,
            revision=rollout.revision,
            traffic=rollout.traffic,
        )

    def stop(
        self, name: str, spec: Mapping[str, Any], paths: StatePaths, progress: DeployProgress
    ) -> None:
        from runners.deploy import kserve_rollout

        kserve_rollout.delete(kserve_rollout.api_client(), _namespace(spec), name)

    def live(self, name: str, spec: Mapping[str, Any], paths: StatePaths) -> LiveDeployment | None:
        """The InferenceService as the cluster's API server reports it; None when no cluster
        is configured or it does not answer (then nothing is known either way)."""
        from runners.deploy import kserve_rollout

        try:
            api = kserve_rollout.api_client()
            api.configuration.retries = 0
            rollout = kserve_rollout.status(api, _namespace(spec), name)
        except DeployError:
            return None
        if rollout is None:
            return LiveDeployment(False, None, None, None, False)
        return LiveDeployment(True, rollout.model_version, rollout.url, None, rollout.ready)

    def missing(self) -> str:
        return "InferenceService missing"

    def drift(
        self, name: str, spec: Mapping[str, Any], outputs: DeploymentOutputs, paths: StatePaths
    ) -> list[DriftFinding]:
        version, namespace = outputs.version, _namespace(spec)
        found = self.live(name, spec, paths)
        if found is None:
            return []
        if not found.running:
            return [
                DriftFinding(
                    f"{version} serving",
                    f"no InferenceService {namespace}/{name}",
                    "llmops apply re-applies it",
                )
            ]
        if found.version != version:
            return [DriftFinding(f"{version} serving", f"{found.version} serving", "llmops apply")]
        if not found.ready:
            return [
                DriftFinding(
                    f"{version} ready",
                    "InferenceService not Ready",
                    f"kubectl -n {namespace} describe inferenceservice {name}",
                )
            ]
        return []

    def status(
        self, name: str, spec: Mapping[str, Any], paths: StatePaths
    ) -> tuple[dict[str, Any] | None, str]:
        found = self.live(name, spec, paths)
        if found is None:
            return None, "; live: no cluster answers"
        words = (
            f"; live: {found.version} at {found.endpoint}, "
            + ("ready" if found.ready else "not ready")
            if found.running
            else "; live: no InferenceService"
        )
        return found.as_dict(with_pid=False), words

    def manifest_lines(self, name: str, spec: Mapping[str, Any], version: str) -> list[str]:
        """The InferenceService and ServingRuntime as YAML lines; [] for a spec that does not
        render."""
        from runners.deploy import kserve_manifests

        try:
            release = Release(name, version, dict(spec))
            release, uri, account = over_store(release, None, publish=False)
            manifests = kserve_manifests.render_manifests(release, uri, account)
        except (DeployError, KeyError, ValueError):
            return []
        return yaml.safe_dump_all(manifests, sort_keys=False).splitlines(keepends=True)


def over_store(
    release: Release, paths: StatePaths | None, publish: bool
) -> tuple[Release, str | None, str | None]:
    """(release, storage URI, service account) for the InferenceService. A spec that names
    neither kserve.storage_uri nor storage_root, with the store on S3 (LLMOPS_STORE), reads
    the versions from the store: <store>/serve as storage root, <store>/serve/<model>/<N>/ as
    URI, through the ServiceAccount `llmops-store` whose Secret KServe's storage initializer
    reads. With `publish`, the model's, base's and adapters' versions are copied there from
    their blobs first; otherwise (a manifest for review) nothing is sent."""
    from runners.deploy.kserve_manifests import STORE_ACCOUNT, version_uri

    target = dict(release.spec.get("kserve") or {})
    on_s3 = os.environ.get(STORE_ENV, "").startswith("s3://")
    if target.get("storage_uri") or target.get("storage_root") or not on_s3:
        return release, target.get("storage_uri"), None
    store_url = os.environ[STORE_ENV].rstrip("/")
    served = [release.model_version, release.base_version, *(v for _, v in release.adapters)]
    if publish and paths is not None:
        registry = Registry.open(paths)
        store = registry.blobs.store
        for ref in [r for r in served if r]:
            version = registry.find(ref)
            if version is None or store is None:
                raise DeployError(f"{ref} is not in the registry; cannot put it in the store")
            copy_version(store, ref, [(f.path, f.sha256, f.size) for f in version.files])
    target["storage_root"] = f"{store_url}/{SERVE_PREFIX}"
    # Ends with "/": KServe lists the prefix, and serve/<model>/1 is a prefix of .../10/.
    name, _, number = release.model_version.partition("@")
    uri = version_uri(target["storage_root"], name, number)
    release = replace(release, spec={**release.spec, "kserve": target})
    return release, uri, STORE_ACCOUNT


def with_pushed_image(release: Release, state_root: Path) -> Release:
    """The release for KServe: a spec that keeps the default runtime image names the serving
    image `llmops images build --push` pushed from this state folder, by digest, if any."""
    if release.spec["kserve"].get("image"):
        return release
    image = images.pushed(state_root, "serve")
    if not image:
        return release
    target = {**release.spec["kserve"], "image": image}
    return replace(release, spec={**release.spec, "kserve": target})


register(KServeTarget())
