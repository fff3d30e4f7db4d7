"""Runner `deploy`, images: llmops' own images, built from this checkout and pushed.

Two images: the runner (what a Kubernetes Job runs: `python -m runners.train JOB` and
`python -m runners.evaluate JOB`) and the serving runtime without weights (what KServe's
ServingRuntime runs, the weights coming from the storageUri). Both contexts are rendered like
the docker target's (runtime_modules.py: the project modules the entry imports, requirements
pinned to the versions installed here; torch from `docker_context.torch_source`), tagged with
the code version, built with docker or podman (whichever answers, docker_engine.py) and
pushed; a pushed image is named by its digest.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from runners.deploy import docker_context, docker_engine, runtime_modules
from runners.deploy.release import DeployError, Release

# controller.state.artifacts: the pod entry of jobs over an S3 store (its pod.py)
RUNNER_ENTRIES = ("runners.train", "runners.evaluate", "controller.state.artifacts")
RUNNER_REPOSITORY = "llmops/runner"
SERVE_REPOSITORY = "llmops/serve"


@dataclass(frozen=True)
class Built:
    name: str  # "runner" or "serve"
    tag: str
    image_id: str
    context: Path
    pushed: str | None = None  # REGISTRY/REPOSITORY@sha256:... once pushed


def runner_dockerfile(
    base: str = "python:3.11-slim", torch: docker_context.TorchSource | None = None
) -> str:
    lines = [
        "# syntax=docker/dockerfile:1",
        "# llmops runner image: training and evaluation jobs (python -m runners.train JOB,",
        "# python -m runners.evaluate JOB).",
        "# Rendered by llmops (runners/deploy/images.py); edits are overwritten.",
        # The same first layers as the serving image's: one torch layer serves both.
        *docker_context.base_lines(base, torch or docker_context.TorchSource()),
        "COPY requirements.txt /opt/llmops/requirements.txt",
        "RUN pip install -r /opt/llmops/requirements.txt",
        f"RUN useradd --system --uid {docker_context.USER_ID} --create-home "
        "--home-dir /home/llmops llmops",
        "COPY src/ /opt/llmops/src/",
        "ENV PYTHONPATH=/opt/llmops/src",
        # The Job's pod gives the state volume to this user with fsGroup.
        f"USER {docker_context.USER_ID}",
        "WORKDIR /home/llmops",
        'CMD ["python", "-m", "runners.train", "--help"]',
    ]
    return "\n".join(lines) + "\n"


def render_runner_context(
    out: Path, source_root: Path | None = None, torch: docker_context.TorchSource | None = None
) -> docker_context.Context:
    """The runner image's build context in `out` (replacing an earlier one there); torch
    from `torch`, by default `docker_context.torch_source()`."""
    root = source_root or Path(__file__).resolve().parents[2]
    torch = torch or docker_context.torch_source()
    files: set[str] = set()
    requirements: set[str] = set()
    for entry in RUNNER_ENTRIES:
        found = runtime_modules.collect(root, entry, "transformers")
        files.update(found.files)
        requirements.update(found.requirements)
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        texts = {
            "Dockerfile": runner_dockerfile(torch=torch),
            ".dockerignore": docker_context.DOCKERIGNORE,
            "requirements.txt": "".join(f"{pin}\n" for pin in sorted(requirements, key=str.lower)),
        }
        for name, text in texts.items():
            (staging / name).write_text(text, encoding="utf-8")
        for relative in sorted(files):
            docker_context._place(root / relative, staging / "src" / relative)
        docker_context.place_torch(staging, torch)
        hashes = {
            p.relative_to(staging).as_posix(): docker_context._sha256(p)
            for p in sorted(staging.rglob("*"))
            if p.is_file()
        }
        digest = hashlib.sha256(
            "".join(f"{path}\0{sha}\n" for path, sha in sorted(hashes.items())).encode()
        ).hexdigest()
        manifest = {
            "image": "runner",
            "torch": torch.manifest(),
            "digest": f"sha256:{digest}",
            "files": [{"path": p, "sha256": s} for p, s in sorted(hashes.items())],
        }
        (staging / docker_context.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        docker_context._swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return docker_context.Context(path=out, tag="", digest=f"sha256:{digest}", files=hashes)


def render_serve_context(out: Path, release: Release) -> docker_context.Context:
    """The serving runtime's context without weights (KServe reads them from storageUri)."""
    return docker_context.render_context(out, release, None)


def _run(args: list[str], what: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-20:])
        raise DeployError(f"{what} failed ({' '.join(args[:3])} ...):\n{tail}")
    return done


def build(context: Path, tag: str, name: str, engine: str | None = None) -> Built:
    """Build `context` as `tag` with docker or podman, whichever answers."""
    found, why = docker_engine.find_engine(engine)
    if found is None:
        raise DeployError(
            f"no container engine answers here ({why}); the {name} context is at {context}: "
            f"docker build -t {tag} {context}"
        )
    return Built(name, tag, docker_engine.build_image(found, context, tag), context)


def push(built: Built, registry: str, engine: str | None = None, tls_verify: bool = True) -> Built:
    """Push to REGISTRY (host[:port][/path]); returns the image named by its digest there."""
    found, why = docker_engine.find_engine(engine)
    if found is None:
        raise DeployError(f"no container engine answers here ({why}) to push {built.tag}")
    first, _, rest = built.tag.partition("/")
    # The tag's own registry host (localhost/..., ghcr.io/...) gives way to REGISTRY.
    path = rest if rest and ("." in first or ":" in first or first == "localhost") else built.tag
    remote = f"{registry.rstrip('/')}/{path}"
    _run([found, "tag", built.tag, remote], f"tagging {remote}")
    if Path(found).name.startswith("podman"):
        with tempfile.TemporaryDirectory() as folder:
            digest_file = Path(folder) / "digest"
            args = [found, "push", f"--digestfile={digest_file}"]
            if not tls_verify:
                args.append("--tls-verify=false")
            _run([*args, remote], f"pushing {remote}")
            digest = digest_file.read_text().strip()
    else:
        _run([found, "push", remote], f"pushing {remote}")
        digests = _run(
            [found, "image", "inspect", "--format", "{{json .RepoDigests}}", remote], "inspect"
        ).stdout
        repo = remote.rsplit(":", 1)[0]
        digest = next(
            (d.split("@", 1)[1] for d in json.loads(digests) if d.startswith(f"{repo}@")), ""
        )
    if not digest.startswith("sha256:"):
        raise DeployError(f"pushed {remote} but the registry returned no digest")
    return Built(
        built.name, built.tag, built.image_id, built.context, f"{remote.rsplit(':', 1)[0]}@{digest}"
    )


# Where `llmops images build` records what it built and pushed, in the state folder: the
# Job executor and the KServe target name a pushed image by digest from here when the spec
# keeps the default image.
IMAGES_FILE = "images.json"


def record(state_root: Path, built: list[Built]) -> Path:
    path = state_root / IMAGES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    known = recorded_all(state_root)
    for item in built:
        known[item.name] = {"tag": item.tag, "image_id": item.image_id, "pushed": item.pushed}
    path.write_text(json.dumps(known, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def recorded_all(state_root: Path) -> dict[str, dict[str, str | None]]:
    path = state_root / IMAGES_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pushed(state_root: Path, name: str) -> str | None:
    """The image `llmops images build --push` pushed for `name` (by digest), if any."""
    entry = recorded_all(state_root).get(name) or {}
    ref = entry.get("pushed") if isinstance(entry, dict) else None
    return ref if isinstance(ref, str) and "@sha256:" in ref else None
