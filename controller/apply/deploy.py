"""Apply, deployment: turn a Deployment spec into a runtime config and roll it out on its target."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from controller.api import split_ref
from controller.api.deployment import KEY_ENV_PATTERN, KEY_ENV_PREFIX, DeploymentSpec
from controller.api.model import (
    GgufFileSource,
    ModelSpec,
    PythonPackageSource,
    QuantizedSource,
)
from controller.apply.context import ApplyStep
from controller.apply.evaluate import Evaluator
from controller.apply.hooks import ConsoleProgress
from controller.apply.pull import ensure_model
from controller.plan.types import DesiredResource
from controller.state.lockfile import DeploymentOutputs, LockEntry
from controller.targets.base import DeployProgress, DeployRequest, target_for
from controller.targets.local import SERVE_API_KEY_ENV
from runners.deploy.release import (
    DeployError,
    Release,
    base_version_of,
    client_key_env,
    config_adapters,
    lora_rank,
)
from runners.evaluate.placeholders import fill
from runners.pull.origins import package_file
from runners.weights import adapter_base


class Deployer(ApplyStep):
    """Rolls Deployment specs out through their target (controller/targets): works out the
    target-neutral runtime config and release, then hands them to `target_for(spec.target)`."""

    progress: DeployProgress | None = None  # the apply's hooks, set by the Applier

    def _reporter(self) -> DeployProgress:
        return self.progress or ConsoleProgress(self.console)

    def spec(self, name: str) -> DeploymentSpec:
        return self._resource(name).spec_as(DeploymentSpec)

    def fields(self, name: str) -> dict[str, Any]:
        """The spec's JSON form: what the release, the manifests and the lock entry record."""
        return dict(self._resource(name).fields)

    def _resource(self, name: str) -> DesiredResource:
        resource = self.desired.resources.get(f"Deployment/{name}")
        if resource is None:
            raise DeployError(f"no Deployment spec named '{name}'")
        return resource

    def api_key(self, name: str, spec: DeploymentSpec) -> str | None:
        ref = spec.api_key
        if ref is None:
            return None
        if ref.secret:
            if target_for(spec.target).reads_secret_keys:
                return None  # the cluster reads it from the Secret
            raise DeployError(
                f"Deployment {name}: api_key {{secret: {ref.secret}}} names a Kubernetes "
                "secret, which only target kserve can read; use {env: VARIABLE} for "
                f"target {spec.target}"
            )
        env = ref.env or ""
        if not re.fullmatch(KEY_ENV_PATTERN, env):
            # Validate refuses such specs; this guards specs that reach here another way.
            raise DeployError(
                f"Deployment {name}: api_key names {env}, which is not a key variable "
                f"({KEY_ENV_PREFIX}<NAME>); rename the variable and the spec's api_key.env"
            )
        value = os.environ.get(env)
        if not value:
            raise DeployError(
                f"Deployment {name}: api_key names the environment variable {env}, "
                f"which is not set; export {env}=<key> and apply again"
            )
        return value

    def smoke_prompts(self, spec: DeploymentSpec) -> list[str]:
        """The first prompts of the smoke suite's first generation task (readiness check)."""
        suite_name = spec.smoke_suite
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
            prompts = []
            with data[task["name"]].open(encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        prompts.append(fill(task["prompt"], json.loads(line)))
                    if len(prompts) == count:
                        break
            return prompts
        return []

    def gguf_path(self, name: str, spec: DeploymentSpec, folder: Path | None = None) -> str | None:
        """llama.cpp serves the GGUF file a Model spec was imported from, or the one a
        quantized Model derived (in the version's `folder`; its gate passed to be stored)."""
        model = self.desired.resources.get(f"Model/{split_ref(spec.model)[0]}")
        source = model.spec_as(ModelSpec).source if model else None
        if spec.runtime != "llama-cpp":
            if isinstance(source, QuantizedSource):
                raise DeployError(
                    f"Deployment {name}: {spec.model} is a GGUF artifact ({source.quantization});"
                    " serve it with runtime llama-cpp, or serve its source "
                    f"{source.from_} with runtime transformers"
                )
            return None
        if isinstance(source, QuantizedSource) and folder is not None:
            found = sorted(folder.glob("*.gguf"))
            if found:
                return str(found[0])
        if isinstance(source, GgufFileSource):
            return str(self.root / source.path)
        if isinstance(source, PythonPackageSource):
            return str(package_file(source.model_dump(mode="json")))
        raise DeployError(
            f"Deployment {name}: runtime llama-cpp serves GGUF files, and {spec.model} was "
            "not imported from one; use runtime transformers"
        )

    def runtime_config(self, name: str, spec: DeploymentSpec) -> tuple[dict[str, Any], str]:
        """The runtime's config (runners/serve) for this deployment, and the version served."""
        version, path = ensure_model(
            spec.model, dict(self.desired.resources), self.registry, self.root, self.console
        )
        ref = f"{version.model.name}@{version.number}"
        collect = spec.collect.model_dump(mode="json")
        store = collect.pop("into", None)
        collect["dir"] = str(self.registry.paths.collected(store)) if store else None
        config = {
            "name": name,
            "model_version": ref,
            "model_dir": str(path),
            "backend": spec.runtime,
            "gguf_path": self.gguf_path(name, spec, path),
            "host": "127.0.0.1",
            "public_port": spec.port,
            "api_key_env": SERVE_API_KEY_ENV if spec.api_key else None,
            "limits": spec.limits.model_dump(mode="json"),
            "collect": collect,
            # Without a smoke suite the runtime's own greeting prompt checks generation.
            "smoke": {"prompts": self.smoke_prompts(spec) or ["Hello!"], "max_tokens": 16},
        }
        if spec.clients:  # absent without: configs (and digests) from before clients stay
            config["clients"] = [
                {
                    "name": client.name,
                    "key_env": client_key_env(client.name),
                    "quotas": client.quotas.model_dump(mode="json"),
                }
                for client in spec.clients
            ]
        if spec.embeddings.enabled:  # absent when off: configs from before embeddings stay
            config["embeddings"] = self.embeddings_config(name, spec)
        if spec.adapters:  # absent without: configs (and digests) from before adapters stay
            config["adapters"] = self.adapters_config(name, spec, path)
        return config, ref

    def adapters_config(self, name: str, spec: DeploymentSpec, base: Path) -> list[dict[str, Any]]:
        """The runtime's `adapters`: each adapter version materialised beside its base, which
        must be the version the Deployment serves."""
        served = []
        for index, adapter in enumerate(spec.adapters):
            version, path = ensure_model(
                adapter, dict(self.desired.resources), self.registry, self.root, self.console
            )
            ref = f"{version.model.name}@{version.number}"
            found = adapter_base(path)
            if found is None or found.resolve() != Path(base).resolve():
                raise DeployError(
                    f"Deployment {name}: adapters[{index}] {ref} "
                    + ("is not an adapter-only version" if found is None else "has another base")
                    + f"; adapters must be LoRA versions (training.merge: false) of {spec.model}"
                )
            if version.model.name == name:
                raise DeployError(
                    f"Deployment {name}: adapters[{index}] {ref} has the Deployment's own name, "
                    "which serves the base; rename the Deployment or the Model"
                )
            served.append({"name": version.model.name, "version": ref, "dir": str(path)})
        return served

    def embeddings_config(self, name: str, spec: DeploymentSpec) -> dict[str, Any]:
        """The runtime's `embeddings` section; an embedding model is pulled like the served
        one and read from its registry folder."""
        settings = spec.embeddings
        model_dir = None
        if settings.model is not None:
            if spec.target != "local":
                raise DeployError(
                    f"Deployment {name}: embeddings.model is served by target local only (its "
                    f"weights are not shipped to a {spec.target} runtime yet); leave it unset "
                    "to pool the served model's hidden states"
                )
            _, path = ensure_model(
                settings.model,
                dict(self.desired.resources),
                self.registry,
                self.root,
                self.console,
            )
            model_dir = str(path)
        return {
            "enabled": True,
            "model_dir": model_dir,
            "pooling": settings.pooling,
            "normalize": settings.normalize,
        }

    def client_keys(self, name: str, spec: DeploymentSpec) -> dict[str, str]:
        """Each named client's key by client name, read where apply runs; as api_key, a
        {secret: ...} key is left to a target that reads secrets (kserve)."""
        keys = {}
        for client in spec.clients:
            ref = client.api_key
            if ref.secret:
                if target_for(spec.target).reads_secret_keys:
                    continue
                raise DeployError(
                    f"Deployment {name}: client {client.name}'s api_key {{secret: {ref.secret}}} "
                    "names a Kubernetes secret, which only target kserve can read; use "
                    f"{{env: VARIABLE}} for target {spec.target}"
                )
            env = ref.env or ""
            value = os.environ.get(env) if re.fullmatch(KEY_ENV_PATTERN, env) else None
            if not value:
                raise DeployError(
                    f"Deployment {name}: client {client.name}'s api_key names the environment "
                    f"variable {env}, which is not set (or not {KEY_ENV_PREFIX}<NAME>); export "
                    f"{env}=<key> and apply again"
                )
            keys[client.name] = value
        return keys

    def deploy(self, name: str) -> DeploymentOutputs:
        spec = self.spec(name)
        target = target_for(spec.target)
        config, ref = self.runtime_config(name, spec)
        gguf = config["gguf_path"]
        release = Release(
            name,
            ref,
            self.fields(name),
            smoke_prompts=config["smoke"]["prompts"],
            gguf_file=Path(gguf).name if gguf else None,
            adapters=config_adapters(config),
            base_version=base_version_of(config["model_dir"]),
            max_lora_rank=lora_rank(
                [a["dir"] for a in config.get("adapters") or []]
                + ([config["model_dir"]] if config["model_dir"] else [])
            ),
        )
        request = DeployRequest(
            name=name,
            spec=self.fields(name),
            version=ref,
            runtime=config,
            release=release,
            model_path=Path(config["model_dir"]),
            paths=self.registry.paths,
            api_key=lambda: self.api_key(name, spec),
            client_keys=lambda: self.client_keys(name, spec),
        )
        return target.deploy(request, self._reporter())

    def stop(self, name: str, recorded: LockEntry) -> None:
        """Stop what the lock entry says was deployed (its spec, not today's: it was removed)."""
        assert isinstance(recorded.outputs, DeploymentOutputs)
        target = target_for(recorded.outputs.target or "local")
        target.stop(name, recorded.spec, self.registry.paths, self._reporter())
