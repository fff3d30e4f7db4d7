"""Docker target: the build context for a tiny real model stored as the registry stores it
(symlinks into a blob folder), read back with dockerfile-parse; where torch comes from; the
build without an engine; and `llmops apply` end to end with podman: the image built as
rendered, run, ready, recorded by digest, its stopped container drift that plan and apply
heal, on this machine's engine and on one named by the spec's `docker.host`."""

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from dockerfile_parse import DockerfileParser

from controller.api.deployment import DeploymentSpec
from runners.deploy import docker_context, docker_engine
from runners.deploy.local import free_port
from runners.deploy.release import DeployError, Release
from tests import podman
from tests.apply_repo import git
from tests.conftest import PROJECT_ROOT
from tests.integration.test_apply import llmops
from tests.tiny import make_tiny_llama, model_spec


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
        api_key={"env": "LLMOPS_KEY_SUPPORT"},
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
    context = docker_context.render_context(tmp_path / "ctx", release(), model_dir)
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
        "docker run --rm -p 8000:8080 -e LLMOPS_KEY_SUPPORT "
        "-v llmops-collect-support-assistant:/var/lib/llmops/collect "
        "llmops/support-assistant:tiny-1"
    )
    for entry in manifest["files"]:
        assert sha256(context.path / entry["path"]) == entry["sha256"]


def test_dockerfile_instructions(tmp_path: Path, model_dir: Path) -> None:
    context = docker_context.render_context(
        tmp_path / "ctx", release(), model_dir, torch=docker_context.TorchSource()
    )
    steps = instructions(context.path)
    names = [name for name, _ in steps]
    assert names == [
        "FROM",
        "ENV",
        "RUN",
        "COPY",
        "RUN",
        "RUN",
        "COPY",
        "COPY",
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
    # torch first and from the CPU index; the requirements next; the user before the model
    # and the code, so a new version or a code change rebuilds only the last layers.
    assert steps[2] == (
        "RUN",
        "pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0",
    )
    assert steps[4] == ("RUN", "pip install -r /opt/llmops/requirements.txt")
    assert steps[5][1].startswith("useradd --system --uid 10001")
    assert steps[6] == ("COPY", "model/ /mnt/models/")
    assert steps[7] == ("COPY", "src/ /opt/llmops/src/")
    assert steps[11] == ("USER", "10001")
    assert values["EXPOSE"] == "8080"
    assert "/v2/health/ready" in values["HEALTHCHECK"]
    assert json.loads(values["CMD"]) == ["python", "-m", "runners.serve"]
    parser = DockerfileParser(path=str(context.path / "Dockerfile"))
    assert parser.envs["LLMOPS_SERVE_CONFIG"] == "/etc/llmops/serve.json"
    assert steps[8] == ("COPY", "serve.json /etc/llmops/serve.json")
    assert not (context.path / "wheels").exists()
    assert json.loads((context.path / "manifest.json").read_text())["torch"] == {
        "index": "https://download.pytorch.org/whl/cpu"
    }


WHEEL = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"


def wheelhouse(folder: Path, *names: str) -> Path:
    """A folder of wheel files: torch_source only reads their names, the build their bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"PK\x05\x06" + bytes(18))
    return folder


def test_torch_from_a_wheelhouse_goes_into_the_context_and_is_mounted(
    tmp_path: Path, model_dir: Path
) -> None:
    house = wheelhouse(tmp_path / "wheels", WHEEL)
    torch = docker_context.torch_source({"LLMOPS_TORCH_WHEELS": str(house)})
    assert torch == docker_context.TorchSource(wheel=house / WHEEL)
    context = docker_context.render_context(tmp_path / "ctx", release(), model_dir, torch=torch)
    steps = instructions(context.path)
    assert steps[2] == (
        "RUN",
        f"--mount=type=bind,source=wheels,target=/tmp/wheels pip install /tmp/wheels/{WHEEL}",
    )
    # The wheel is part of what the context's digest covers, and of nothing else's layer.
    assert context.files[f"wheels/{WHEEL}"] == sha256(house / WHEEL)
    assert json.loads((context.path / "manifest.json").read_text())["torch"] == {"wheel": WHEEL}
    assert not any(value.startswith("wheels") for name, value in steps if name == "COPY")
    index = docker_context.render_context(
        tmp_path / "ctx2", release(), model_dir, torch=docker_context.TorchSource()
    )
    assert index.digest != context.digest


def test_where_torch_comes_from(tmp_path: Path) -> None:
    bare = {"HOME": str(tmp_path / "home"), "XDG_CONFIG_DIRS": str(tmp_path / "none")}
    cuda = WHEEL.replace("+cpu", "")
    house = wheelhouse(
        tmp_path / "house",
        cuda,
        WHEEL,
        WHEEL.replace("2.13.0", "2.12.0"),
        WHEEL.replace("cp311-cp311", "cp310-cp310"),
    )
    # A named wheelhouse: the CPU build of the pinned version for this Python.
    assert (
        docker_context.torch_source({**bare, "LLMOPS_TORCH_WHEELS": str(house)}).wheel
        == house / WHEEL
    )
    (house / WHEEL).unlink()
    assert (
        docker_context.torch_source({**bare, "LLMOPS_TORCH_WHEELS": str(house)}).wheel
        == house / cuda
    )
    empty = wheelhouse(tmp_path / "empty")
    with pytest.raises(DeployError) as refused:
        docker_context.torch_source({**bare, "LLMOPS_TORCH_WHEELS": str(empty)})
    assert str(refused.value).startswith(f"LLMOPS_TORCH_WHEELS={empty} holds no torch==2.13.0")
    assert "pip download --no-deps --index-url https://download.pytorch.org/whl/cpu" in str(
        refused.value
    )
    # An index of one's own (a mirror).
    mirror = {**bare, "LLMOPS_TORCH_INDEX_URL": "https://mirror.example/whl/cpu"}
    assert docker_context.torch_source(mirror) == docker_context.TorchSource(
        index_url="https://mirror.example/whl/cpu"
    )
    # Neither: the wheelhouse pip is configured with, when it holds the wheel ...
    config = tmp_path / "home/.config/pip/pip.conf"
    config.parent.mkdir(parents=True)
    cpu = wheelhouse(tmp_path / "cpu", WHEEL)
    config.write_text(f"[global]\nfind-links = file://{cpu}\n")
    assert docker_context.torch_source(bare).wheel == cpu / WHEEL
    assert docker_context.torch_source({**bare, "PIP_FIND_LINKS": str(empty)}).wheel == cpu / WHEEL
    # ... else the PyTorch CPU index.
    config.write_text(f"[install]\nfind-links = {empty} https://example.com/links\n")
    assert docker_context.torch_source(bare) == docker_context.TorchSource()


def test_the_runtime_accepts_the_config(tmp_path: Path, model_dir: Path) -> None:
    from runners.serve.config import load_config

    context = docker_context.render_context(tmp_path / "ctx", release(), model_dir)
    config = load_config([str(context.path / "serve.json")])
    assert config.name == "support-assistant" and config.model_version == "tiny@1"
    assert (config.host, config.port, str(config.model_dir)) == ("0.0.0.0", 8080, "/mnt/models")
    assert config.api_key_env == "LLMOPS_KEY_SUPPORT"
    assert config.smoke.prompts == ['Say "hi" to $HOME']


def test_only_serving_code_and_pinned_requirements(tmp_path: Path, model_dir: Path) -> None:
    context = docker_context.render_context(tmp_path / "ctx", release(), model_dir)
    src = context.path / "src" / "runners"
    assert (src / "serve" / "__main__.py").is_file() and (src / "serve" / "config.py").is_file()
    assert not (src / "train").exists() and not (src / "deploy").exists()
    requirements = (context.path / "requirements.txt").read_text().split()
    assert requirements and all("==" in line for line in requirements)
    names = {line.split("==")[0].lower() for line in requirements}
    # torch comes with the base image; peft serves adapter versions; training libraries stay out.
    assert "kserve" in names and "peft" in names
    assert not names & {"torch", "trl", "lm-eval", "lm_eval", "dvc"}, names


def test_rendering_is_deterministic(tmp_path: Path, model_dir: Path) -> None:
    first = docker_context.render_context(tmp_path / "a", release(), model_dir)
    second = docker_context.render_context(tmp_path / "b", release(), model_dir)
    assert first.digest == second.digest and first.files == second.files
    for relative in [*first.files, "manifest.json"]:
        assert (first.path / relative).read_bytes() == (second.path / relative).read_bytes()
    (first.path / "stale.txt").write_text("left from before")
    again = docker_context.render_context(tmp_path / "a", release(), model_dir)
    assert again.digest == first.digest and not (first.path / "stale.txt").exists()
    other = docker_context.render_context(
        tmp_path / "c", release(limits={"max_tokens": 64}), model_dir
    )
    assert other.digest != first.digest


def test_runtime_only_context_has_no_model(tmp_path: Path) -> None:
    context = docker_context.render_context(tmp_path / "ctx", release(), None)
    assert not (context.path / "model").exists()
    assert ("COPY", "model/ /mnt/models/") not in instructions(context.path)


def test_a_folder_that_is_not_a_context_is_left_alone(tmp_path: Path, model_dir: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DeployError, match="is not an llmops build context"):
        docker_context.render_context(tmp_path / "mine", release(), model_dir)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(DeployError, match="does not exist; pull the model first"):
        docker_context.render_context(tmp_path / "ctx", release(), tmp_path / "missing")


def test_build_without_a_docker_command(tmp_path: Path) -> None:
    context = docker_context.render_context(tmp_path / "ctx", release(), None)
    result = docker_engine.build(context.path, docker=str(tmp_path / "no-such-docker"))
    assert not result.built
    assert result.message == (
        f"no Docker engine answers here (no '{tmp_path / 'no-such-docker'}' command on PATH); "
        f"the context is at {context.path}, build it with: "
        f"docker build -t llmops/support-assistant:tiny-1 {context.path}"
    )


def test_build_when_the_engine_does_not_answer(tmp_path: Path) -> None:
    """The docker CLI installed but no daemon: `docker info` fails as it does then."""
    context = docker_context.render_context(tmp_path / "ctx", release(), None)
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
    result = docker_engine.build(context.path, tag="x:1", docker=str(cli))
    assert not result.built
    assert "exited 1: Cannot connect to the Docker daemon" in result.message
    assert result.message.endswith(f"build it with: docker build -t x:1 {context.path}")


def test_renders_from_the_checkout_by_default(tmp_path: Path) -> None:
    context = docker_context.render_context(tmp_path / "ctx", release(), None)
    ours = PROJECT_ROOT / "runners" / "serve" / "config.py"
    assert sha256(context.path / "src" / "runners" / "serve" / "config.py") == sha256(ours)


def test_the_context_serves_its_model(tmp_path: Path, model_dir: Path) -> None:
    """What the image would run, run here: only the context's code on the path (the
    checkout's runners cannot be imported), its serve.json with this machine's paths and
    port, its copy of the model. Proves the copied code is complete and the weights load."""
    context = docker_context.render_context(tmp_path / "ctx", release(), model_dir)
    config = json.loads((context.path / "serve.json").read_text())
    port = free_port()
    config |= {"host": "127.0.0.1", "port": port, "model_dir": str(context.path / "model")}
    config["collect"]["dir"] = str(tmp_path / "collected")
    env = {
        **os.environ,
        "PYTHONPATH": str(context.path / "src"),
        "LLMOPS_SERVE_CONFIG": json.dumps(config),
        "LLMOPS_KEY_SUPPORT": "test-key",
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


KEY_ENV = "LLMOPS_KEY_TINY_DOCKER"
KEY = "sk-docker-0123456789"


def docker_repo(root: Path, tiny_model: Path, name: str, port: int, docker_spec: str) -> Path:
    """A repository with the tiny model and one docker Deployment of it, committed."""
    (root / "specs/models").mkdir(parents=True)
    (root / "specs/deployments").mkdir()
    (root / "specs/models/tiny.yaml").write_text(
        model_spec("tiny", {"type": "local", "path": "models/tiny"})
    )
    (root / f"specs/deployments/{name}.yaml").write_text(
        "apiVersion: llmops/v1\nkind: Deployment\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n  model: tiny\n  target: docker\n"
        f"  port: {port}\n  api_key: {{env: {KEY_ENV}}}\n  limits: {{max_tokens: 16}}\n"
        f"  docker: {docker_spec}\n"
    )
    shutil.copytree(tiny_model, root / "models/tiny")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "a docker deployment")
    return root


@pytest.fixture
def engine_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """podman with its base image; apply sees the deployment's key and no shared state."""
    podman.base_image()
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(KEY_ENV, KEY)


@contextlib.contextmanager
def cleaned(name: str) -> Iterator[None]:
    """Never leave the deployment's container or image behind, whatever the test did."""
    try:
        yield
    finally:
        podman.podman("rm", "-f", "-v", "-t", "2", docker_engine.container_name(name), check=False)
        # podman names a short tag localhost/..., its API service docker.io/...
        for registry in ("localhost", "docker.io"):
            podman.podman("rmi", f"{registry}/llmops/{name}:tiny-1", check=False)


def chat(endpoint: str, name: str) -> str | None:
    client = openai.OpenAI(base_url=endpoint, api_key=KEY)
    answer = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "How do I reset my password?"}]
    )
    assert answer.model == name
    return answer.choices[0].message.content


def test_apply_builds_runs_records_heals_and_stops_the_image(
    engine_env: None, tmp_path: Path, tiny_model: Path
) -> None:
    name, port = "docker-assistant", free_port()
    root = docker_repo(tmp_path / "repo", tiny_model, name, port, "{}")
    address = f"Deployment/{name}"
    with cleaned(name):
        began = time.monotonic()
        first = llmops(root, "apply", "--json")
        print(f"first apply (build, run, ready): {time.monotonic() - began:.0f} s")
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        outputs = {r["address"]: r for r in json.loads(first.stdout)["results"]}[address]["outputs"]
        image_id = podman.podman(
            "image", "inspect", "--format", "{{.Id}}", f"localhost/llmops/{name}:tiny-1"
        ).stdout.strip()
        context = root / f".llmops/deployments/{name}/docker"
        manifest = json.loads((context / "manifest.json").read_text())
        assert outputs == {
            "version": "tiny@1",
            "target": "docker",
            "endpoint": f"http://127.0.0.1:{port}/v1",
            "image": f"llmops/{name}:tiny-1",
            "context_digest": manifest["digest"],
            "built": True,
            "image_id": f"sha256:{image_id}",
        }
        # The lock file records the image by digest; torch came from where this machine has it.
        lock = json.loads((root / "llmops.lock").read_text())["resources"][address]["outputs"]
        assert lock["image_id"] == f"sha256:{image_id}"
        assert manifest["torch"] == docker_context.torch_source().manifest()
        assert chat(outputs["endpoint"], name) is not None
        assert llmops(root, "drift").returncode == 0
        assert llmops(root, "plan").returncode == 0, "nothing to do"

        # The container stops: drift, a plan that redeploys, an apply that starts it again.
        podman.podman("stop", "-t", "2", docker_engine.container_name(name))
        drift = llmops(root, "drift", "--json")
        assert drift.returncode == 3, drift.stdout + drift.stderr
        (found,) = json.loads(drift.stdout)["drift"]
        assert found["address"] == address and found["actual"] == "container exited"
        plan = json.loads(llmops(root, "plan", "--json").stdout)
        (action,) = [a for a in plan["actions"] if a["address"] == address]
        assert action["action"] == "deploy" and "container not running" in action["reason"]
        began = time.monotonic()
        healed = llmops(root, "apply", "--json")
        print(f"second apply (warm build, run, ready): {time.monotonic() - began:.0f} s")
        assert healed.returncode == 0, healed.stdout[-3000:] + healed.stderr[-3000:]
        assert docker_engine.container_state(name) == "running"
        assert chat(outputs["endpoint"], name) is not None
        assert llmops(root, "drift").returncode == 0

        # The spec goes: apply removes the container.
        (root / f"specs/deployments/{name}.yaml").unlink()
        git(root, "commit", "-qam", "retire it")
        removed = llmops(root, "apply")
        assert removed.returncode == 0, removed.stderr
        assert docker_engine.container_state(name) == "missing"


@pytest.fixture
def engine_socket(tmp_path: Path) -> Iterator[str]:
    """Another engine address: podman's API service on a socket of its own."""
    podman.engine()
    socket = tmp_path / "engine.sock"
    with (tmp_path / "service.log").open("w") as log:
        service = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{socket}"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        for _ in range(100):
            if socket.exists():
                break
            time.sleep(0.1)
        assert socket.exists(), (tmp_path / "service.log").read_text()
        yield f"unix://{socket}"
    finally:
        service.terminate()
        service.wait(timeout=30)


def test_the_spec_says_where_to_build_and_run(
    engine_env: None, engine_socket: str, tmp_path: Path, tiny_model: Path
) -> None:
    """podman drives that engine here. The docker CLI answers on podman's socket too (and
    llmops would pick it first), but builds through podman's Docker API without its layer
    cache, minutes every run; tried once, it passed: so the docker CLI is left off PATH."""
    name, port = "remote-assistant", free_port()
    root = docker_repo(tmp_path / "repo", tiny_model, name, port, f'{{host: "{engine_socket}"}}')
    cli = shutil.which("docker")
    path = os.environ["PATH"]
    if cli and Path(cli).parent != Path(shutil.which("podman") or "").parent:
        path = os.pathsep.join(p for p in path.split(os.pathsep) if Path(p) != Path(cli).parent)
    with cleaned(name):
        applied = llmops(root, "apply", "--json", env={"PATH": path})
        assert applied.returncode == 0, applied.stdout[-3000:] + applied.stderr[-3000:]
        results = {r["address"]: r for r in json.loads(applied.stdout)["results"]}
        outputs = results[f"Deployment/{name}"]["outputs"]
        assert outputs["built"] and outputs["endpoint"] == f"http://127.0.0.1:{port}/v1"
        # The engine behind that socket made the container (the same storage as podman's here).
        labels = podman.podman(
            "inspect", "--format", "{{json .Config.Labels}}", docker_engine.container_name(name)
        ).stdout
        assert json.loads(labels)[docker_engine.LABEL_VERSION] == "tiny@1"
        assert docker_engine.container_state(name, host=engine_socket) == "running"
        assert chat(outputs["endpoint"], name) is not None
        assert llmops(root, "drift", env={"PATH": path}).returncode == 0
        (root / f"specs/deployments/{name}.yaml").unlink()
        git(root, "commit", "-qam", "retire it")
        assert llmops(root, "apply", env={"PATH": path}).returncode == 0
        assert docker_engine.container_state(name, host=engine_socket) == "missing"
