"""Docker target with LoRA adapters: the build context of a Deployment with `adapters` holds
the base and each adapter (its adapter_config.json naming the base where the image has it),
the runtime's config loads them in one process; an adapter-only version brings its base.
Each context is run here as the image would run it (its own code, its files laid out as the
container has them under /mnt) and answers for every name; with podman the image itself is
built and run (hardening: a real image build takes minutes)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.api.deployment import DeploymentSpec
from runners.deploy import docker_context, docker_engine
from runners.deploy.local import free_port
from runners.deploy.release import DeployError, Release, base_version_of
from tests import podman
from tests.tiny import make_random_adapter


@pytest.fixture(scope="module")
def views(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Versions as the registry lays them out (<model>/<number>); adapters name `../../tiny/1`."""
    root = tmp_path_factory.mktemp("views")
    shutil.copytree(tiny_model, root / "tiny" / "1")
    make_random_adapter(root / "tiny" / "1", root / "alpha" / "1", seed=1)
    make_random_adapter(root / "tiny" / "1", root / "beta" / "2", seed=2)
    return root


def adapters_release(port: int = 8000, **fields: Any) -> Release:
    spec = DeploymentSpec(
        model="tiny@1", target="docker", port=port, adapters=["alpha@1", "beta@2"], **fields
    ).model_dump()
    return Release("support", "tiny@1", spec, adapters=(("alpha", "alpha@1"), ("beta", "beta@2")))


def adapter_dirs(views: Path) -> dict[str, Path]:
    return {"alpha": views / "alpha" / "1", "beta": views / "beta" / "2"}


def as_in_the_image(context: Path, mnt: Path) -> None:
    """The context's weights where the Dockerfile's COPY lines put them, under `mnt`."""
    for line in (context / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and line.split()[2].startswith("/mnt/"):
            source, dest = line.split()[1:3]
            shutil.copytree(context / source, mnt / dest.removeprefix("/mnt/"))


@contextlib.contextmanager
def serving(context: Path, tmp_path: Path) -> Iterator[str]:
    """The context's runtime, run here with only its own code on the path and its files laid
    out under tmp/mnt as the image has them under /mnt."""
    mnt = tmp_path / "mnt"
    as_in_the_image(context, mnt)
    config = json.loads((context / "serve.json").read_text())
    port = free_port()
    config |= {"host": "127.0.0.1", "port": port, "model_dir": str(mnt / "models")}
    for adapter in config.get("adapters", []):
        adapter["dir"] = str(mnt / adapter["dir"].removeprefix("/mnt/"))
    config["collect"]["dir"] = str(tmp_path / "collected")
    env = {
        **os.environ,
        "PYTHONPATH": str(context / "src"),
        "LLMOPS_SERVE_CONFIG": json.dumps(config),
        "HF_HUB_OFFLINE": "1",
    }
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "runners.serve"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        ready = False
        for _ in range(600):  # gives up after a few minutes; not a timing assertion
            if process.poll() is not None:
                break
            with contextlib.suppress(httpx.TransportError):
                ready = httpx.get(f"{url}/v2/health/ready").status_code == 200
            if ready:
                break
            time.sleep(0.5)
        assert ready, log.read_text()[-3000:]
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def listed(url: str) -> set[tuple[str, str]]:
    return {(m["id"], m["owned_by"]) for m in httpx.get(f"{url}/v1/models").json()["data"]}


def answer(url: str, model: str) -> str:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "How do I reset my password?"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def test_a_deployment_with_adapters_builds_them_into_its_context_and_serves_them(
    tmp_path: Path, views: Path
) -> None:
    context = docker_context.render_context(
        tmp_path / "ctx", adapters_release(), views / "tiny" / "1", adapter_dirs=adapter_dirs(views)
    ).path
    dockerfile = (context / "Dockerfile").read_text()
    assert "COPY model/ /mnt/models/\n" in dockerfile
    assert "COPY adapters/ /mnt/adapters/\n" in dockerfile
    config = json.loads((context / "serve.json").read_text())
    assert config["adapters"] == [
        {"name": "alpha", "version": "alpha@1", "dir": "/mnt/adapters/alpha"},
        {"name": "beta", "version": "beta@2", "dir": "/mnt/adapters/beta"},
    ]
    # The image's adapter names its base where the image has it; the registry's is untouched.
    copied = json.loads((context / "adapters/alpha/adapter_config.json").read_text())
    assert copied["base_model_name_or_path"] == "../../models"
    stored = json.loads((views / "alpha/1/adapter_config.json").read_text())
    assert stored["base_model_name_or_path"] == "../../tiny/1"
    manifest = json.loads((context / "manifest.json").read_text())
    paths = {f["path"] for f in manifest["files"]}
    assert {"adapters/alpha/adapter_model.safetensors", "adapters/beta/adapter_config.json"} <= (
        paths
    )

    with serving(context, tmp_path) as url:
        assert listed(url) == {("support", "tiny@1"), ("alpha", "alpha@1"), ("beta", "beta@2")}
        answers = {name: answer(url, name) for name in ("support", "alpha", "beta")}
    # The random adapters change the answers: each name runs its own weights.
    assert len(set(answers.values())) == 3, answers


def test_an_adapter_only_version_brings_its_base(tmp_path: Path, views: Path) -> None:
    model_dir = views / "alpha" / "1"
    spec = DeploymentSpec(model="alpha@1", target="docker").model_dump()
    release = Release("assistant", "alpha@1", spec, base_version=base_version_of(model_dir))
    context = docker_context.render_context(tmp_path / "ctx", release, model_dir).path
    dockerfile = (context / "Dockerfile").read_text()
    assert dockerfile.index("COPY base/ /mnt/base/") < dockerfile.index("COPY model/ /mnt/models/")
    assert (context / "base/config.json").is_file()
    copied = json.loads((context / "model/adapter_config.json").read_text())
    assert copied["base_model_name_or_path"] == "../base"
    with serving(context, tmp_path) as url:
        assert listed(url) == {("assistant", "alpha@1")}
        assert answer(url, "assistant")


def test_an_adapter_without_its_folder_is_refused(tmp_path: Path, views: Path) -> None:
    with pytest.raises(DeployError, match=r"no folder for adapter beta; materialise"):
        docker_context.render_context(
            tmp_path / "ctx",
            adapters_release(),
            views / "tiny" / "1",
            adapter_dirs={"alpha": views / "alpha" / "1"},
        )


@pytest.mark.hardening
def test_the_image_with_adapters_runs_in_podman(tmp_path: Path, views: Path) -> None:
    """The rendered context built by podman as it is and run: the container serves the base
    and both adapters from one process."""
    podman.base_image()
    port = free_port()
    release = adapters_release(port=port, docker={"image": "llmops/support-adapters:test"})
    context = docker_context.render_context(
        tmp_path / "ctx", release, views / "tiny" / "1", adapter_dirs=adapter_dirs(views)
    )
    try:
        built = docker_engine.build(context.path, context.tag, docker="podman")
        assert built.built, built.message
        running = docker_engine.run(release, context.tag, {}, docker="podman")
        assert listed(running.endpoint) == {
            ("support", "tiny@1"),
            ("alpha", "alpha@1"),
            ("beta", "beta@2"),
        }
        assert answer(running.endpoint, "beta")
    finally:
        name = docker_engine.container_name(release.name)
        podman.podman("rm", "-f", "-v", "-t", "2", name, check=False)
        podman.podman("rmi", f"localhost/{context.tag}", check=False)
