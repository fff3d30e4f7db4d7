"""Docker target: the build context for a tiny real model stored as the registry stores it
(symlinks into a blob folder), read back with dockerfile-parse; the build without an engine."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from dockerfile_parse import DockerfileParser

from controller.api.deployment import DeploymentSpec
from runners.deploy import docker
from runners.deploy.local import free_port
from runners.deploy.release import DeployError, Release
from tests.conftest import PROJECT_ROOT
from tests.tiny import make_tiny_llama


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model version as the blob store holds it: read-only blobs, a folder of symlinks."""
    root = tmp_path_factory.mktemp("state")
    built = make_tiny_llama(root / "built")
    version = root / "models" / "tiny" / "1"
    version.mkdir(parents=True)
    for path in sorted(built.iterdir()):
        blob = root / "blobs" / sha256(path)
        blob.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, blob)
        blob.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        (version / path.name).symlink_to(blob)
    return version


def release(**fields: Any) -> Release:
    spec = DeploymentSpec(
        model="tiny@1",
        target="docker",
        port=8000,
        api_key={"env": "SUPPORT_KEY"},
        collect={"enabled": True, "into": "support-feedback"},
        **fields,
    ).model_dump()
    return Release("support-assistant", "tiny@1", spec, ['Say "hi" to $HOME'])


def instructions(context: Path) -> list[tuple[str, str]]:
    parser = DockerfileParser(path=str(context / "Dockerfile"))
    return [
        (item["instruction"], item["value"])
        for item in parser.structure
        if item["instruction"] != "COMMENT"
    ]


def test_context_holds_the_model_as_files(tmp_path: Path, model_dir: Path) -> None:
    context = docker.render_context(tmp_path / "ctx", release(), model_dir)
    for link in model_dir.iterdir():
        copied = context.path / "model" / link.name
        assert copied.is_file() and not copied.is_symlink()
        assert sha256(copied) == sha256(link.resolve())
        assert context.files[f"model/{link.name}"] == sha256(link.resolve())
    manifest = json.loads((context.path / "manifest.json").read_text())
    assert manifest["digest"] == context.digest
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == context.files
    assert manifest["tag"] == "llmops/support-assistant:tiny-1"
    assert manifest["run"] == (
        "docker run --rm -p 8000:8080 -e SUPPORT_KEY "
        "-v llmops-collect-support-assistant:/var/lib/llmops/collect "
        "llmops/support-assistant:tiny-1"
    )
    for entry in manifest["files"]:
        assert sha256(context.path / entry["path"]) == entry["sha256"]


def test_dockerfile_instructions(tmp_path: Path, model_dir: Path) -> None:
    context = docker.render_context(tmp_path / "ctx", release(), model_dir)
    steps = instructions(context.path)
    names = [name for name, _ in steps]
    assert names == [
        "FROM",
        "ENV",
        "RUN",
        "COPY",
        "RUN",
        "COPY",
        "COPY",
        "RUN",
        "COPY",
        "ENV",
        "VOLUME",
        "USER",
        "WORKDIR",
        "EXPOSE",
        "HEALTHCHECK",
        "CMD",
    ]
    values = dict(steps)
    assert steps[0] == ("FROM", "python:3.11-slim")
    # torch comes first, from the CPU index; the rest from pinned requirements.
    assert steps[2] == (
        "RUN",
        "pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0",
    )
    assert steps[5] == ("COPY", "model/ /mnt/models/")
    assert steps[6] == ("COPY", "src/ /opt/llmops/src/")
    assert steps[11] == ("USER", "10001")
    assert values["EXPOSE"] == "8080"
    assert "/v2/health/ready" in values["HEALTHCHECK"]
    assert json.loads(values["CMD"]) == ["python", "-m", "runners.serve"]
    parser = DockerfileParser(path=str(context.path / "Dockerfile"))
    assert parser.envs["LLMOPS_SERVE_CONFIG"] == "/etc/llmops/serve.json"
    assert steps[8] == ("COPY", "serve.json /etc/llmops/serve.json")


def test_the_runtime_accepts_the_config(tmp_path: Path, model_dir: Path) -> None:
    from runners.serve.config import load_config

    context = docker.render_context(tmp_path / "ctx", release(), model_dir)
    config = load_config([str(context.path / "serve.json")])
    assert config.name == "support-assistant" and config.model_version == "tiny@1"
    assert (config.host, config.port, str(config.model_dir)) == ("0.0.0.0", 8080, "/mnt/models")
    assert config.api_key_env == "SUPPORT_KEY"
    assert config.smoke.prompts == ['Say "hi" to $HOME']


def test_only_serving_code_and_pinned_requirements(tmp_path: Path, model_dir: Path) -> None:
    context = docker.render_context(tmp_path / "ctx", release(), model_dir)
    src = context.path / "src" / "runners"
    assert (src / "serve" / "__main__.py").is_file() and (src / "serve" / "config.py").is_file()
    assert not (src / "train").exists() and not (src / "deploy").exists()
    requirements = (context.path / "requirements.txt").read_text().split()
    assert requirements and all("==" in line for line in requirements)
    names = {line.split("==")[0].lower() for line in requirements}
    assert "kserve" in names and "torch" not in names and "peft" not in names


def test_rendering_is_deterministic(tmp_path: Path, model_dir: Path) -> None:
    first = docker.render_context(tmp_path / "a", release(), model_dir)
    second = docker.render_context(tmp_path / "b", release(), model_dir)
    assert first.digest == second.digest and first.files == second.files
    for relative in [*first.files, "manifest.json"]:
        assert (first.path / relative).read_bytes() == (second.path / relative).read_bytes()
    (first.path / "stale.txt").write_text("left from before")
    again = docker.render_context(tmp_path / "a", release(), model_dir)
    assert again.digest == first.digest and not (first.path / "stale.txt").exists()
    other = docker.render_context(tmp_path / "c", release(limits={"max_tokens": 64}), model_dir)
    assert other.digest != first.digest


def test_runtime_only_context_has_no_model(tmp_path: Path) -> None:
    context = docker.render_context(tmp_path / "ctx", release(), None)
    assert not (context.path / "model").exists()
    assert ("COPY", "model/ /mnt/models/") not in instructions(context.path)


def test_a_folder_that_is_not_a_context_is_left_alone(tmp_path: Path, model_dir: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DeployError, match="is not an llmops build context"):
        docker.render_context(tmp_path / "mine", release(), model_dir)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(DeployError, match="does not exist; pull the model first"):
        docker.render_context(tmp_path / "ctx", release(), tmp_path / "missing")


def test_build_without_a_docker_command(tmp_path: Path) -> None:
    context = docker.render_context(tmp_path / "ctx", release(), None)
    result = docker.build(context.path, docker=str(tmp_path / "no-such-docker"))
    assert not result.built
    assert result.message == (
        f"no Docker engine answers here (no '{tmp_path / 'no-such-docker'}' command on PATH); "
        f"the context is at {context.path}, build it with: "
        f"docker build -t llmops/support-assistant:tiny-1 {context.path}"
    )


def test_build_when_the_engine_does_not_answer(tmp_path: Path) -> None:
    """The docker CLI installed but no daemon: `docker info` fails as it does then."""
    context = docker.render_context(tmp_path / "ctx", release(), None)
    cli = tmp_path / "bin" / "docker"
    cli.parent.mkdir()
    cli.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = info ]; then\n'
        "  echo 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
        "Is the docker daemon running?' >&2\n"
        "  exit 1\n"
        "fi\n"
        "echo unexpected >&2; exit 2\n"
    )
    cli.chmod(0o755)
    result = docker.build(context.path, tag="x:1", docker=str(cli))
    assert not result.built
    assert "exited 1: Cannot connect to the Docker daemon" in result.message
    assert result.message.endswith(f"build it with: docker build -t x:1 {context.path}")


@pytest.mark.skipif(
    not os.environ.get("LLMOPS_TEST_DOCKER_BUILD") or docker._engine("docker") is not None,
    reason="a real image build (minutes, downloads torch): set LLMOPS_TEST_DOCKER_BUILD=1 "
    "where a Docker engine answers",
)
def test_build_with_an_engine(tmp_path: Path, model_dir: Path) -> None:
    context = docker.render_context(tmp_path / "ctx", release(), model_dir)
    result = docker.build(context.path, tag="llmops-test/support-assistant:tiny-1")
    assert result.built and result.image_id


def test_renders_from_the_checkout_by_default(tmp_path: Path) -> None:
    context = docker.render_context(tmp_path / "ctx", release(), None)
    ours = PROJECT_ROOT / "runners" / "serve" / "config.py"
    assert sha256(context.path / "src" / "runners" / "serve" / "config.py") == sha256(ours)


def test_the_context_serves_its_model(tmp_path: Path, model_dir: Path) -> None:
    """What the image would run, run here: only the context's code on the path (the
    checkout's runners cannot be imported), its serve.json with this machine's paths and
    port, its copy of the model. Proves the copied code is complete and the weights load."""
    context = docker.render_context(tmp_path / "ctx", release(), model_dir)
    config = json.loads((context.path / "serve.json").read_text())
    port = free_port()
    config |= {"host": "127.0.0.1", "port": port, "model_dir": str(context.path / "model")}
    config["collect"]["dir"] = str(tmp_path / "collected")
    env = {
        **os.environ,
        "PYTHONPATH": str(context.path / "src"),
        "LLMOPS_SERVE_CONFIG": json.dumps(config),
        "SUPPORT_KEY": "test-key",
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
    try:
        ready = False
        for _ in range(600):  # gives up after a few minutes; not a timing assertion
            if process.poll() is not None:
                break
            with contextlib.suppress(httpx.TransportError):
                ready = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200
            if ready:
                break
            time.sleep(0.5)
        assert ready, log.read_text()[-3000:]
        models = httpx.get(
            f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer test-key"}
        )
        assert models.status_code == 200
        assert [m["id"] for m in models.json()["data"]] == ["support-assistant"]
    finally:
        process.terminate()
        process.wait(timeout=60)
