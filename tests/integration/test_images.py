"""Images built and run for real with podman (tests/podman.py): the serving image from the
docker target's build context as rendered (its pip installs too), on a debootstrap base,
serving the tiny model; the official openai client gets a chat completion through it. Pushed
to a real registry (Debian's docker-registry), the image is named by digest and pulls back the
same; `llmops images build --push` builds and pushes both of llmops' images, and the Job and
KServe manifests name them by digest."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from controller.api.deployment import DeploymentSpec
from runners.deploy import docker_context, docker_engine, images
from runners.deploy.local import free_port
from runners.deploy.release import Release
from tests import podman

KEY = "sk-image-test"


def serve_release() -> Release:
    spec = DeploymentSpec(
        model="tiny@1",
        target="docker",
        api_key={"env": "LLMOPS_KEY_SUPPORT"},
        limits={"max_tokens": 16},
        collect={"enabled": True, "into": "support-feedback"},
    ).model_dump()
    return Release("support-assistant", "tiny@1", spec, ["Hello?"])


@pytest.fixture(scope="session")
def serving_image(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> str:
    podman.engine()
    context = docker_context.render_context(
        tmp_path_factory.mktemp("serve") / "ctx", serve_release(), tiny_model
    )
    tag = f"localhost/llmops-test/support-assistant:{context.digest[7:19]}"
    podman.build(context.path, tag)
    return tag


def test_the_serving_image_answers_the_openai_client(serving_image: str) -> None:
    port = free_port()
    config = json.loads(
        podman.podman(
            "run", "--rm", "--entrypoint", "cat", serving_image, "/etc/llmops/serve.json"
        ).stdout
    )
    assert config["model_dir"] == "/mnt/models" and config["name"] == "support-assistant"
    config["port"] = port
    name = f"llmops-test-{uuid.uuid4().hex[:8]}"
    podman.podman(
        "run",
        "-d",
        "--name",
        name,
        *podman.run_args(),
        "-e",
        f"LLMOPS_SERVE_CONFIG={json.dumps(config)}",
        "-e",
        f"LLMOPS_KEY_SUPPORT={KEY}",
        serving_image,
    )
    try:
        ready = False
        deadline = time.monotonic() + 600  # gives up after minutes; not a timing assertion
        while time.monotonic() < deadline:
            state = podman.podman("inspect", "--format", "{{.State.Running}}", name).stdout
            if state.strip() != "true":
                break
            with contextlib.suppress(httpx.TransportError):
                ready = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200
            if ready:
                break
            time.sleep(0.5)
        logs = podman.podman("logs", name, check=False)
        assert ready, (logs.stdout + logs.stderr)[-3000:]
        user = podman.podman("exec", name, "id", "-u").stdout.strip()
        assert user == str(docker_context.USER_ID)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)
        answer = client.chat.completions.create(
            model="support-assistant",
            messages=[{"role": "user", "content": "How do I reset my password?"}],
            max_tokens=8,
        )
        assert answer.choices[0].message.content is not None
        assert answer.model == "support-assistant"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong"
            ).chat.completions.create(
                model="support-assistant", messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        podman.podman("rm", "-f", "-t", "5", name, check=False)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    with podman.registry(tmp_path) as address:
        yield address


def test_a_pushed_image_is_named_by_digest_and_manifests_use_it(
    serving_image: str, registry: str, tmp_path: Path
) -> None:
    from controller.apply.kubernetes_job import DEFAULT_RUNNER_IMAGE, render_job

    image_id = podman.podman("image", "inspect", "--format", "{{.Id}}", serving_image).stdout
    built = images.Built("serve", serving_image, image_id.strip(), tmp_path)
    pushed = images.push(built, registry, engine="podman", tls_verify=False)
    assert pushed.pushed is not None
    repository, _, digest = pushed.pushed.partition("@")
    assert repository == f"{registry}/llmops-test/support-assistant"
    assert digest.startswith("sha256:")
    # Pulled back by digest, it is the same image.
    podman.podman("rmi", f"{registry}/{serving_image.split('/', 1)[1]}")
    podman.podman("pull", "--tls-verify=false", pushed.pushed)
    pulled = podman.podman("image", "inspect", "--format", "{{.Id}}", pushed.pushed).stdout
    assert pulled.strip() == built.image_id
    # Recorded in the state folder, a Job with the default image names it by digest.
    runner = images.Built("runner", "llmops/runner:x", "sha256:1", tmp_path, pushed.pushed)
    images.record(tmp_path / "state", [runner])
    job = render_job(
        tmp_path / "state/runs/job.json",
        "exp/default",
        "sha256:" + "ab" * 32,
        {"image": DEFAULT_RUNNER_IMAGE},
        tmp_path / "state",
    )
    assert job.spec.template.spec.containers[0].image == pushed.pushed


def test_images_build_renders_both_contexts_and_names_a_missing_engine(tmp_path: Path) -> None:
    from tests.integration.test_apply import llmops

    (tmp_path / "specs").mkdir()
    done = llmops(tmp_path, "images", "build", "--engine", str(tmp_path / "no-engine"))
    assert done.returncode == 1
    assert "no container engine answers here" in done.stderr
    runner = tmp_path / ".llmops/images/runner"
    assert (runner / "src/runners/train/__main__.py").is_file()
    assert (runner / "src/runners/evaluate/run.py").is_file()
    # Of the controller, only the store's pod entry (jobs over an S3 store) and what it imports.
    shipped = {
        p.relative_to(runner / "src").as_posix() for p in (runner / "src/controller").rglob("*.py")
    }
    assert "controller/state/artifacts/pod.py" in shipped
    around = {"controller/__init__.py", "controller/state/__init__.py", "controller/state/paths.py"}
    assert all(f.startswith("controller/state/artifacts/") or f in around for f in shipped), shipped
    requirements = (runner / "requirements.txt").read_text()
    assert "transformers==" in requirements and "torch" not in requirements
    assert "boto3==" in requirements and "llmops-gitops" not in requirements
    assert "USER 10001" in (runner / "Dockerfile").read_text()


def test_the_docker_target_runs_the_image_and_sees_it_stop(serving_image: str) -> None:
    """runners/deploy/docker_engine.py's run, state and stop, on podman with a published port."""
    port = free_port()
    base = serve_release()
    rel = Release(base.name, base.model_version, base.spec | {"port": port}, base.smoke_prompts)
    try:
        running = docker_engine.run(
            rel, serving_image, {"LLMOPS_KEY_SUPPORT": KEY}, docker="podman"
        )
        assert running.endpoint == f"http://127.0.0.1:{port}"
        image_id = podman.podman("image", "inspect", "--format", "{{.Id}}", serving_image).stdout
        assert running.image_id == f"sha256:{image_id.strip()}"
        # The key went through the environment, not the command line.
        config = podman.podman(
            "inspect", "--format", "{{json .Config.CreateCommand}}", running.container
        )
        assert KEY not in config.stdout
        client = openai.OpenAI(base_url=f"{running.endpoint}/v1", api_key=KEY)
        answer = client.chat.completions.create(
            model="support-assistant", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert answer.choices
        assert docker_engine.container_state(rel.name, "podman") == "running"
        podman.podman("stop", "-t", "5", running.container)
        assert docker_engine.container_state(rel.name, "podman") == "exited"
        assert docker_engine.stop(rel.name, "podman")
        assert docker_engine.container_state(rel.name, "podman") == "missing"
    finally:
        podman.podman("rm", "-f", docker_engine.container_name(rel.name), check=False)
        podman.podman("volume", "rm", "-f", f"llmops-collect-{rel.name}", check=False)


def test_images_build_pushes_both_images_and_the_manifests_name_them(
    registry: str, tmp_path: Path
) -> None:
    """`llmops images build --push`: both images from this checkout, built with podman as
    rendered, pushed; a Job and a KServe ServingRuntime that keep the default image name the
    pushed images by digest, and each pulls back as the image that was built."""
    from controller.apply.kubernetes_job import DEFAULT_RUNNER_IMAGE, render_job
    from controller.targets.kserve import with_pushed_image
    from runners.deploy import kserve_manifests
    from tests.integration.test_apply import llmops

    podman.base_image()
    (tmp_path / "specs").mkdir()
    began = time.monotonic()
    done = llmops(
        tmp_path,
        "images",
        "build",
        "--push",
        registry,
        "--engine",
        "podman",
        "--no-tls-verify",
        "--json",
    )
    print(f"llmops images build --push: {time.monotonic() - began:.0f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    built = {item["name"]: item for item in report["images"]}
    assert set(built) == {"runner", "serve"}
    state = tmp_path / ".llmops"
    for name, repository in (
        ("runner", images.RUNNER_REPOSITORY),
        ("serve", images.SERVE_REPOSITORY),
    ):
        item = built[name]
        assert item["tag"].startswith(f"{repository}:")
        assert item["pushed"].startswith(f"{registry}/{repository}@sha256:")
        assert images.pushed(state, name) == item["pushed"]
        # Pulled back by digest (the local copy gone first), it is the image that was built.
        podman.podman("rmi", f"{registry}/{item['tag']}")
        podman.podman("pull", "--tls-verify=false", item["pushed"])
        pulled = podman.podman("image", "inspect", "--format", "{{.Id}}", item["pushed"]).stdout
        assert docker_engine.image_digest(pulled) == docker_engine.image_digest(item["image_id"])
    # The runner runs the evaluation entry as well as training's.
    usage = podman.podman(
        "run",
        "--rm",
        "--network",
        "none",
        built["runner"]["pushed"],
        "python",
        "-m",
        "runners.evaluate",
        check=False,
    )
    assert usage.returncode == 2 and "usage: python -m runners.evaluate JOB.json" in usage.stderr
    job = render_job(
        state / "runs/job.json",
        "exp/default",
        "sha256:" + "ab" * 32,
        {"image": DEFAULT_RUNNER_IMAGE},
        state,
    )
    assert job.spec.template.spec.containers[0].image == built["runner"]["pushed"]
    spec = DeploymentSpec(model="tiny@1", target="kserve").model_dump()
    release = with_pushed_image(Release("assistant", "tiny@1", spec, []), state)
    runtime, _ = kserve_manifests.render_manifests(release, "pvc://models/tiny")
    assert runtime["kind"] == "ServingRuntime"
    (container,) = runtime["spec"]["containers"]
    assert container["image"] == built["serve"]["pushed"]
    for item in built.values():
        podman.podman("rmi", item["pushed"], f"localhost/{item['tag']}", check=False)
