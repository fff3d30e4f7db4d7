"""Runner `deploy`, target docker: a build context per release, and a build where an engine runs.

The context holds a Dockerfile, .dockerignore, the runtime's config, pinned requirements, the
project modules the runtime imports, the model's files (symlinks from the blob store
dereferenced: hard links where possible, copies otherwise) and manifest.json listing every
file with its sha256 and the context's digest. Rendering is deterministic: the same inputs
give the same bytes. Without a model folder the context builds the runtime image that KServe
runs, the weights coming from the storageUri instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from runners.deploy import runtime_modules
from runners.deploy.release import (
    CONTAINER_COLLECT_DIR,
    CONTAINER_MODEL_DIR,
    CONTAINER_PORT,
    DeployError,
    Release,
    container_config,
    image_tag,
)

TORCH = "torch==2.13.0"
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
ENTRY = "runners.serve"
MANIFEST = "manifest.json"
CONFIG_PATH = "/etc/llmops/serve.json"
USER_ID = 10001
DOCKERIGNORE = "**/__pycache__\n**/*.py[co]\nmanifest.json\n"
# The slim base has no curl; the readiness route answers 503 until the model is loaded and
# its smoke prompts pass, and urlopen raises on it.
HEALTHCHECK = (
    "import urllib.request; "
    f"urllib.request.urlopen('http://127.0.0.1:{CONTAINER_PORT}/v2/health/ready', timeout=4)"
)


@dataclass(frozen=True)
class Context:
    path: Path
    tag: str
    digest: str
    files: dict[str, str]  # relative path -> sha256


@dataclass(frozen=True)
class BuildResult:
    built: bool
    tag: str
    context: Path
    message: str
    image_id: str | None = None


def dockerfile(release: Release, with_model: bool) -> str:
    base = release.spec["docker"]["base_image"]
    lines = [
        "# syntax=docker/dockerfile:1",
        f"# llmops serving image: deployment {release.name}, model {release.model_version}.",
        "# Rendered by llmops (runners/deploy/docker.py); edits are overwritten.",
        f"FROM {base}",
        "ENV PYTHONDONTWRITEBYTECODE=1 \\",
        "    PYTHONUNBUFFERED=1 \\",
        "    PIP_NO_CACHE_DIR=1 \\",
        "    PIP_DISABLE_PIP_VERSION_CHECK=1 \\",
        "    HF_HUB_OFFLINE=1",
    ]
    if release.spec["runtime"] == "llama-cpp":
        # PyPI has only an sdist of llama-cpp-python: it compiles, for any x86-64 CPU.
        lines += [
            "RUN apt-get update \\",
            " && apt-get install -y --no-install-recommends build-essential cmake \\",
            " && rm -rf /var/lib/apt/lists/*",
            'ENV CMAKE_ARGS="-DGGML_NATIVE=OFF"',
        ]
    lines += [
        # torch first and from the CPU index, so the requirements never pull a CUDA build.
        f"RUN pip install --index-url {TORCH_INDEX} {TORCH}",
        "COPY requirements.txt /opt/llmops/requirements.txt",
        "RUN pip install -r /opt/llmops/requirements.txt",
    ]
    # The weights change with every version, the code with llmops releases: weights first,
    # so a new version rebuilds only its own layers and a code change skips the copy.
    if with_model:
        lines.append(f"COPY model/ {CONTAINER_MODEL_DIR}/")
    lines += [
        "COPY src/ /opt/llmops/src/",
        f"RUN useradd --system --uid {USER_ID} --create-home --home-dir /home/llmops llmops \\",
        f" && mkdir -p {CONTAINER_COLLECT_DIR} && chown {USER_ID} {CONTAINER_COLLECT_DIR}",
        # The runtime reads its config from the file the variable names (or the JSON itself,
        # so `docker run -e LLMOPS_SERVE_CONFIG=...` can replace it).
        f"COPY serve.json {CONFIG_PATH}",
        f"ENV PYTHONPATH=/opt/llmops/src LLMOPS_SERVE_CONFIG={CONFIG_PATH}",
        f'VOLUME ["{CONTAINER_COLLECT_DIR}"]',
        f"USER {USER_ID}",
        "WORKDIR /home/llmops",
        f"EXPOSE {CONTAINER_PORT}",
        "HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \\",
        f"  CMD {json.dumps(['python', '-c', HEALTHCHECK])}",
        f"CMD {json.dumps(['python', '-m', ENTRY])}",
    ]
    return "\n".join(lines) + "\n"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _place(source: Path, dest: Path) -> None:
    """A regular file at `dest` with `source`'s bytes (symlinks followed): docker COPY
    skips nothing and follows nothing, so a link into the blob store would break."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    real = source.resolve()
    # COPY keeps the mode, and the image runs as a non-root user: a file only its owner may
    # read (safetensors writes 0600) is copied and made readable rather than linked.
    if real.stat().st_mode & stat.S_IROTH:
        try:
            os.link(real, dest)
            return
        except OSError:
            pass
    shutil.copyfile(real, dest)
    dest.chmod(0o644)


def _model_files(model_dir: Path) -> list[Path]:
    if not model_dir.is_dir():
        raise DeployError(f"model folder {model_dir} does not exist; pull the model first")
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    if not files:
        raise DeployError(f"model folder {model_dir} is empty; pull the model first")
    return files


def _swap_in(staging: Path, out: Path) -> None:
    if out.exists():
        if not (out / MANIFEST).is_file():
            raise DeployError(
                f"{out} exists and is not an llmops build context (no {MANIFEST}); "
                "pick an empty or new folder"
            )
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
    else:
        staging.rename(out)


def render_context(
    out: Path,
    release: Release,
    model_dir: Path | None,
    source_root: Path | None = None,
) -> Context:
    """Write the build context for `release` into `out` (replacing an earlier context there).

    `model_dir` None renders the runtime-only image (weights from KServe's storageUri).
    `source_root` holds the `runners` package; by default the one this module comes from.
    """
    root = source_root or Path(__file__).resolve().parents[2]
    image = runtime_modules.collect(root, ENTRY, release.spec["runtime"])
    config = container_config(release, "docker")
    tag = image_tag(release)
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        texts = {
            "Dockerfile": dockerfile(release, model_dir is not None),
            ".dockerignore": DOCKERIGNORE,
            "serve.json": json.dumps(config, sort_keys=True, indent=2) + "\n",
            "requirements.txt": "".join(f"{pin}\n" for pin in image.requirements),
        }
        for name, text in texts.items():
            (staging / name).write_text(text, encoding="utf-8")
        for relative in image.files:
            _place(root / relative, staging / "src" / relative)
        if model_dir is not None:
            for path in _model_files(model_dir):
                _place(path, staging / "model" / path.relative_to(model_dir))
        hashes = {
            p.relative_to(staging).as_posix(): _sha256(p)
            for p in sorted(staging.rglob("*"))
            if p.is_file()
        }
        digest = hashlib.sha256(
            "".join(f"{path}\0{sha}\n" for path, sha in sorted(hashes.items())).encode()
        ).hexdigest()
        manifest = {
            "deployment": release.name,
            "model_version": release.model_version,
            "runtime": release.spec["runtime"],
            "tag": tag,
            "digest": f"sha256:{digest}",
            "build": f"docker build -t {tag} .",
            "run": run_command(release, tag),
            "files": [{"path": p, "sha256": s} for p, s in sorted(hashes.items())],
            "left_out": image.left_out,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Context(path=out, tag=tag, digest=f"sha256:{digest}", files=hashes)


def run_command(release: Release, tag: str) -> str:
    """How to start the image: the deployment's port, its key variable, a collect volume."""
    parts = ["docker run --rm", f"-p {release.spec['port']}:{CONTAINER_PORT}"]
    key = container_config(release, "docker")["api_key_env"]
    if key:
        parts.append(f"-e {key}")
    if release.spec["collect"]["enabled"]:
        parts.append(f"-v llmops-collect-{release.name}:{CONTAINER_COLLECT_DIR}")
    parts.append(tag)
    return " ".join(parts)


ENGINES = ("docker", "podman")


def _engine(docker: str) -> str | None:
    """None when a Docker engine (docker, or podman, which takes the same commands) answers,
    else why not."""
    if shutil.which(docker) is None:
        return f"no '{docker}' command on PATH"
    # podman's `info` has no ServerVersion; its own version field says it answers.
    field = (
        "{{.Version.Version}}" if Path(docker).name.startswith("podman") else "{{.ServerVersion}}"
    )
    try:
        probe = subprocess.run(
            [docker, "info", "--format", field],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"'{docker} info' failed: {err}"
    if probe.returncode != 0:
        detail = (probe.stderr or probe.stdout).strip().splitlines()
        return f"'{docker} info' exited {probe.returncode}" + (f": {detail[-1]}" if detail else "")
    return None


def find_engine(docker: str | None = None) -> tuple[str | None, str]:
    """(command, "") for `docker`, or the first of docker and podman that answers;
    (None, why not) when none does."""
    whys = []
    for candidate in (docker,) if docker else ENGINES:
        why = _engine(candidate)
        if why is None:
            return candidate, ""
        whys.append(why)
    return None, "; ".join(whys)


def build(context: Path, tag: str | None = None, docker: str | None = None) -> BuildResult:
    """Build the context with `docker`, or with docker or podman, whichever answers;
    otherwise say how to build it. The image id is the digest of its config."""
    manifest_path = context / MANIFEST
    if not manifest_path.is_file():
        raise DeployError(f"{context} is not an llmops build context (no {MANIFEST}); render it")
    tag = tag or json.loads(manifest_path.read_text(encoding="utf-8"))["tag"]
    engine, why = find_engine(docker)
    if engine is None:
        return BuildResult(
            built=False,
            tag=tag,
            context=context,
            message=(
                f"no Docker engine answers here ({why}); the context is at {context}, "
                f"build it with: docker build -t {tag} {context}"
            ),
        )
    done = subprocess.run(
        [engine, "build", "-t", tag, str(context)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-20:])
        raise DeployError(f"{engine} build -t {tag} {context} failed:\n{tail}")
    inspect = subprocess.run(
        [engine, "image", "inspect", "--format", "{{.Id}}", tag],
        capture_output=True,
        text=True,
        check=False,
    )
    image_id = inspect.stdout.strip() or None
    return BuildResult(True, tag, context, f"built {tag} ({image_id or 'id unknown'})", image_id)
