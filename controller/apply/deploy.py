"""Apply, deployment: turn a Deployment spec into a runtime config and roll it out on its target."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import httpx

from controller.api import split_ref
from controller.api.deployment import KEY_ENV_PATTERN, KEY_ENV_PREFIX
from controller.apply.context import ApplyStep
from controller.apply.evaluate import Evaluator
from controller.apply.pull import ensure_model
from controller.state.lockfile import DeploymentOutputs, LockEntry
from runners.deploy import environment, local
from runners.deploy.release import DeployError, Release, container_config

SERVE_API_KEY_ENV = "LLMOPS_SERVE_API_KEY"


class Deployer(ApplyStep):
    """Rolls Deployment specs out: local processes, docker build contexts, KServe."""

    def spec(self, name: str) -> dict[str, Any]:
        resource = self.desired.resources.get(f"Deployment/{name}")
        if resource is None:
            raise DeployError(f"no Deployment spec named '{name}'")
        return dict(resource.spec)

    def api_key(self, name: str, spec: dict[str, Any]) -> str | None:
        ref = spec.get("api_key")
        if not ref:
            return None
        if ref.get("secret"):
            if spec["target"] == "kserve":
                return None  # the cluster reads it from the Secret
            raise DeployError(
                f"Deployment {name}: api_key {{secret: {ref['secret']}}} names a Kubernetes "
                "secret, which only target kserve can read; use {env: VARIABLE} for "
                f"target {spec['target']}"
            )
        if not re.fullmatch(KEY_ENV_PATTERN, ref["env"]):
            # Validate refuses such specs; this guards specs that reach here another way.
            raise DeployError(
                f"Deployment {name}: api_key names {ref['env']}, which is not a key variable "
                f"({KEY_ENV_PREFIX}<NAME>); rename the variable and the spec's api_key.env"
            )
        value = os.environ.get(ref["env"])
        if not value:
            raise DeployError(
                f"Deployment {name}: api_key names the environment variable {ref['env']}, "
                f"which is not set; export {ref['env']}=<key> and apply again"
            )
        return value

    def smoke_prompts(self, spec: dict[str, Any]) -> list[str]:
        """The first prompts of the smoke suite's first generation task (readiness check)."""
        suite_name = spec.get("smoke_suite")
        if not suite_name:
            return []
        evaluator = Evaluator(self.loaded, self.registry, self.console)
        suite = evaluator.suite(suite_name)
        count = int(suite.get("smoke_prompts") or 3)
        data = evaluator.task_data(suite)
        for task in suite["tasks"]:
            if task["type"] != "generate_until" or task["name"] not in data:
                continue
            # {field} placeholders only: str.format would let a suite walk `{row.__class__}`.
            from runners.evaluate.placeholders import fill

            prompts = []
            with data[task["name"]].open(encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        prompts.append(fill(task["prompt"], json.loads(line)))
                    if len(prompts) == count:
                        break
            return prompts
        return []

    def gguf_path(self, name: str, spec: dict[str, Any]) -> str | None:
        """llama.cpp serves the GGUF file a Model spec was imported from."""
        if spec["runtime"] != "llama-cpp":
            return None
        model = self.desired.resources.get(f"Model/{split_ref(spec['model'])[0]}")
        source = dict(model.spec["source"]) if model else {}
        if source.get("type") == "gguf":
            return str(self.root / source["path"])
        if source.get("type") == "python-package":
            from runners.pull.origins import package_file

            return str(package_file(source))
        raise DeployError(
            f"Deployment {name}: runtime llama-cpp serves GGUF files, and {spec['model']} was "
            "not imported from one; use runtime transformers"
        )

    def runtime_config(self, name: str, spec: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """The runtime's config (runners/serve) for this deployment, and the version served."""
        version, path = ensure_model(
            spec["model"], dict(self.desired.resources), self.registry, self.root, self.console
        )
        ref = f"{version.model.name}@{version.number}"
        collect = dict(spec.get("collect") or {})
        store = collect.pop("into", None)
        collect["dir"] = str(self.registry.paths.collected(store)) if store else None
        config = {
            "name": name,
            "model_version": ref,
            "model_dir": str(path),
            "backend": spec["runtime"],
            "gguf_path": self.gguf_path(name, spec),
            "host": "127.0.0.1",
            "public_port": spec["port"],
            "api_key_env": SERVE_API_KEY_ENV if spec.get("api_key") else None,
            "limits": dict(spec["limits"]),
            "collect": collect,
            # Without a smoke suite the runtime's own greeting prompt checks generation.
            "smoke": {"prompts": self.smoke_prompts(spec) or ["Hello!"], "max_tokens": 16},
        }
        return config, ref

    def deploy(self, name: str) -> DeploymentOutputs:
        spec = self.spec(name)
        target = spec["target"]
        if target == "local":
            return self._deploy_local(name, spec)
        release, model_path = self.release(name, spec)
        if target == "docker":
            details = self._deploy_docker(name, release, model_path)
        else:
            details = self._deploy_kserve(name, spec, release)
        return DeploymentOutputs(version=release.model_version, target=target, **details)

    def _deploy_local(self, name: str, spec: dict[str, Any]) -> DeploymentOutputs:
        config, ref = self.runtime_config(name, spec)
        key = self.api_key(name, spec)
        env = {SERVE_API_KEY_ENV: key} if key else {}
        # The key's hash is part of the digest so rotating it restarts the server.
        digest = hashlib.sha256(
            json.dumps(
                {"config": config, "key": hashlib.sha256((key or "").encode()).hexdigest()},
                sort_keys=True,
            ).encode()
        ).hexdigest()

        def check(port: int) -> str | None:
            return chat_check(port, name, key)

        folder = self.registry.paths.deployment(name)
        with self.console.status(f"  starting {ref} for {name}") as status:
            state, happened = local.rollout(
                name,
                ref,
                config,
                folder,
                env,
                digest,
                check=check,
                tick=lambda s: status.update(f"  starting {ref} for {name} ({s:.0f} s)"),
            )
        self.console.print(f"  {name}: {happened} {ref} at {state.endpoint}/v1 (pid {state.pid})")
        return DeploymentOutputs(version=ref, target="local", endpoint=f"{state.endpoint}/v1")

    def release(self, name: str, spec: dict[str, Any]) -> tuple[Any, Path]:
        """The target-neutral description docker and KServe render from, and the model folder."""
        from runners.deploy.release import Release

        config, ref = self.runtime_config(name, spec)
        gguf = config["gguf_path"]
        release = Release(
            name,
            ref,
            spec,
            smoke_prompts=config["smoke"]["prompts"],
            gguf_file=Path(gguf).name if gguf else None,
        )
        return release, Path(config["model_dir"])

    def _deploy_docker(self, name: str, release: Any, model_path: Path) -> dict[str, Any]:
        """Render the build context and build where an engine answers: the image's outputs."""
        from runners.deploy import docker

        folder = self.registry.paths.deployment(name) / "docker"
        # The key is checked before minutes of building, not after, and so is where it goes.
        key = self.api_key(name, release.spec)
        if key:
            environment.check_key_destination(name, release.spec["docker"].get("host"))
        torch = docker.torch_source()
        context = docker.render_context(folder, release, model_path, torch=torch)
        host = release.spec["docker"].get("host")
        with self.console.status(
            f"  building {context.tag} for {name} (torch: {torch.describe()})"
        ):
            outcome = docker.build(context.path, context.tag, host=host)
        self.console.print(f"  {name}: {outcome.message}")
        details: dict[str, Any] = {
            "image": context.tag,
            "context_digest": context.digest,
            "built": outcome.built,
        }
        if not outcome.built:
            return details
        # Built where an engine answers: run it there and wait until it is ready.
        key_env = container_config(release, "docker")["api_key_env"]
        env = {key_env: key} if key and key_env else {}
        with self.console.status(f"  starting {context.tag} for {name}"):
            running = docker.run(release, context.tag, env, host=host)
        if outcome.image_id and running.image_id != outcome.image_id:
            # Another build retagged the image between our build and run.
            raise DeployError(
                f"Deployment {name}: container {running.container} runs {running.image_id}, "
                f"not the image just built ({outcome.image_id}); another build moved the tag "
                f"{context.tag}; apply again"
            )
        self.console.print(
            f"  {name}: {running.container} ready at {running.endpoint}/v1 "
            f"({running.image_id[:19]})"
        )
        return details | {"endpoint": f"{running.endpoint}/v1", "image_id": running.image_id}

    def _deploy_kserve(self, name: str, spec: dict[str, Any], release: Any) -> dict[str, Any]:
        """Apply the manifests and wait for Ready: where the new revision serves."""
        from runners.deploy import kserve

        release = with_pushed_image(release, self.registry.paths.root)
        manifests = kserve.render_manifests(release, spec["kserve"].get("storage_uri"))
        try:
            rollout = kserve.rollout(
                kserve.api_client(), manifests, force=bool(spec["kserve"].get("force_conflicts"))
            )
        except kserve.RolloutFailed as err:
            raise DeployError(str(err)) from err
        self.console.print(f"  {name}: {release.model_version} ready at {rollout.url}")
        return {"endpoint": rollout.url, "revision": rollout.revision, "traffic": rollout.traffic}

    def stop(self, name: str, recorded: LockEntry) -> None:
        """Stop what the lock entry says was deployed (its spec, not today's: it was removed)."""
        assert isinstance(recorded.outputs, DeploymentOutputs)
        target = recorded.outputs.target or "local"
        if target == "local":
            stopped = local.stop(self.registry.paths.deployment(name))
            if stopped:
                self.console.print(f"  stopped {name} ({stopped.version}, pid {stopped.pid})")
        elif target == "docker":
            from runners.deploy import docker

            host = (recorded.spec.get("docker") or {}).get("host")
            if docker.stop(name, host=host):
                self.console.print(f"  stopped {name} (container {docker.container_name(name)})")
        elif target == "kserve":
            from runners.deploy import kserve

            namespace = (recorded.spec.get("kserve") or {}).get("namespace") or "default"
            kserve.delete(kserve.api_client(), namespace, name)


def with_pushed_image(release: Release, state_root: Path) -> Release:
    """The release for KServe: a spec that keeps the default runtime image names the serving
    image `llmops images build --push` pushed from this state folder, by digest, if any."""
    from dataclasses import replace

    from runners.deploy import images

    if release.spec["kserve"].get("image"):
        return release
    image = images.pushed(state_root, "serve")
    if not image:
        return release
    target = {**release.spec["kserve"], "image": image}
    return replace(release, spec={**release.spec, "kserve": target})


def chat_check(port: int, name: str, key: str | None) -> str | None:
    """One real chat completion through the OpenAI route; None when it answers."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={
                "model": name,
                "messages": [{"role": "user", "content": "Hello"}],
                "max_tokens": 8,
            },
            headers=headers,
            timeout=120,
        )
    except httpx.HTTPError as err:
        return f"request failed: {err}"
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    choices = response.json().get("choices") or []
    if not choices:
        return "the answer has no choices"
    return None
