"""Runner `deploy`, target docker, build context: torch's source, the Dockerfile and the
files an image is built from, rendered without running anything (docker_engine.py builds it).

The context holds a Dockerfile, .dockerignore, the runtime's config, pinned requirements, the
project modules the runtime imports, the model's files (symlinks from the blob store
dereferenced: hard links where possible, copies otherwise), the torch wheel when torch comes
from a local wheelhouse (`torch_source`), and manifest.json listing every file with its sha256
and the context's digest. Rendering is deterministic: the same inputs
give the same bytes. Without a model folder the context builds the runtime image that KServe
runs, the weights coming from the storageUri instead.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import platform
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from runners.deploy import runtime_modules
from runners.deploy.release import (
    CONTAINER_ADAPTER_DIR,
    CONTAINER_COLLECT_DIR,
    CONTAINER_MODEL_DIR,
    CONTAINER_PORT,
    DeployError,
    Release,
    adapter_container_dir,
    client_key_envs,
    container_config,
    image_tag,
)
from runners.weights import ADAPTER_CONFIG, adapter_base

TORCH_VERSION = "2.13.0"
TORCH = f"torch=={TORCH_VERSION}"
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
# Where an image build gets torch (see torch_source): a folder holding the wheel, or an index.
WHEELS_ENV = "LLMOPS_TORCH_WHEELS"
INDEX_ENV = "LLMOPS_TORCH_INDEX_URL"
CONTEXT_WHEELS = "wheels"
ENTRY = "runners.serve"
MANIFEST = "manifest.json"
CONFIG_PATH = "/etc/llmops/serve.json"
USER_ID = 10001
DOCKERIGNORE = "**/__pycache__\n**/*.py[co]\nmanifest.json\n"
# The slim base has no curl; the readiness route answers 503 until the model is loaded and
# its smoke prompts pass, and urlopen raises on it.
# An adapter-only model version's base, beside it in the image (its adapter_config.json is
# rewritten to name it there).
CONTAINER_BASE_DIR = "/mnt/base"
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
class TorchSource:
    """Where an image build gets torch: a wheel from a local wheelhouse, taken into the build
    context and bind-mounted into the one RUN that installs it (so it adds no layer of its
    own), or a PyTorch package index (the CPU one by default, so no CUDA build comes in)."""

    index_url: str = TORCH_INDEX
    wheel: Path | None = None

    def describe(self) -> str:
        return f"wheel {self.wheel}" if self.wheel else f"index {self.index_url}"

    def manifest(self) -> dict[str, str]:
        return {"wheel": self.wheel.name} if self.wheel else {"index": self.index_url}

    def run_line(self) -> str:
        if self.wheel is None:
            return f"RUN pip install --index-url {self.index_url} {TORCH}"
        # torch's own dependencies (sympy, networkx, ...) come from the default index.
        return (
            f"RUN --mount=type=bind,source={CONTEXT_WHEELS},target=/tmp/{CONTEXT_WHEELS} "
            f"pip install /tmp/{CONTEXT_WHEELS}/{self.wheel.name}"
        )


_WHEEL = re.compile(
    r"^torch-(?P<version>[^-+]+)(?P<local>\+[^-]+)?-(?P<py>[^-]+)-[^-]+-(?P<plat>.+)\.whl$"
)


def _find_wheel(folders: list[Path]) -> Path | None:
    """The pinned torch wheel for this Python and machine in `folders`, a CPU build first
    (a CUDA one would pull gigabytes of nvidia packages into the image)."""
    python = f"cp{sys.version_info.major}{sys.version_info.minor}"
    found = []
    for folder in folders:
        for path in sorted(folder.glob("torch-*.whl")) if folder.is_dir() else []:
            match = _WHEEL.match(path.name)
            if (
                match
                and match["version"] == TORCH_VERSION
                and match["py"] == python
                and match["plat"].startswith("manylinux")
                and match["plat"].endswith(platform.machine())
            ):
                found.append((match["local"] != "+cpu", path))
    return min(found)[1] if found else None


def _pip_find_links(environ: Mapping[str, str]) -> list[Path]:
    """The local folders pip on this machine is configured to find wheels in (PIP_FIND_LINKS,
    find-links in pip's config files): where this machine's own torch came from."""
    values = [environ.get("PIP_FIND_LINKS", "")]
    home = Path(environ.get("HOME") or Path.home())
    files = [
        *(
            Path(d) / "pip" / "pip.conf"
            for d in environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
        ),
        Path("/etc/pip.conf"),
        home / ".pip" / "pip.conf",
        Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "pip" / "pip.conf",
        Path(sys.prefix) / "pip.conf",
    ]
    if environ.get("PIP_CONFIG_FILE"):
        files.append(Path(environ["PIP_CONFIG_FILE"]))
    for path in files:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path, encoding="utf-8")
        except (OSError, configparser.Error):
            continue
        for section in ("global", "install"):
            values.append(parser.get(section, "find-links", fallback=""))
    folders = []
    for value in values:
        for item in value.split():
            item = item.removeprefix("file://")
            if item.startswith("/") and Path(item) not in folders:
                folders.append(Path(item))
    return folders


def torch_source(environ: Mapping[str, str] | None = None) -> TorchSource:
    """Where builds on this machine get torch. LLMOPS_TORCH_WHEELS (folders, ':'-separated)
    names a wheelhouse that must hold the pinned CPU wheel; LLMOPS_TORCH_INDEX_URL an index;
    otherwise the wheelhouse pip here is configured with when it holds the wheel (a machine
    without download.pytorch.org), else the PyTorch CPU index (a machine with the internet)."""
    environ = os.environ if environ is None else environ
    given = environ.get(WHEELS_ENV, "").strip()
    if given:
        folders = [Path(p) for p in given.split(os.pathsep) if p]
        wheel = _find_wheel(folders)
        if wheel is None:
            raise DeployError(
                f"{WHEELS_ENV}={given} holds no {TORCH} wheel for this Python and machine "
                f"(torch-{TORCH_VERSION}+cpu-cp{sys.version_info.major}{sys.version_info.minor}"
                f"-*-manylinux*_{platform.machine()}.whl); put it there "
                f"('pip download --no-deps --index-url {TORCH_INDEX} -d DIR {TORCH}') "
                f"or unset {WHEELS_ENV}"
            )
        return TorchSource(wheel=wheel)
    index = environ.get(INDEX_ENV, "").strip()
    if index:
        return TorchSource(index_url=index)
    wheel = _find_wheel(_pip_find_links(environ))
    return TorchSource(wheel=wheel) if wheel else TorchSource()


# Shared by the serving and runner images, so both reuse one torch layer (layers are cached
# by the instructions before them): only the lines after torch differ.
PYTHON_ENV = (
    "ENV PYTHONDONTWRITEBYTECODE=1 \\",
    "    PYTHONUNBUFFERED=1 \\",
    "    PIP_NO_CACHE_DIR=1 \\",
    "    PIP_DISABLE_PIP_VERSION_CHECK=1 \\",
    "    HF_HUB_OFFLINE=1 \\",
    "    HF_DATASETS_OFFLINE=1",
)


def base_lines(base: str, torch: TorchSource) -> list[str]:
    """FROM, the environment and torch: the slow layers, first so they are cached longest."""
    return [f"FROM {base}", *PYTHON_ENV, torch.run_line()]


def dockerfile(
    release: Release,
    with_model: bool,
    torch: TorchSource | None = None,
    with_base: bool = False,
    with_adapters: bool = False,
) -> str:
    torch = torch or TorchSource()
    lines = [
        "# syntax=docker/dockerfile:1",
        f"# llmops serving image: deployment {release.name}, model {release.model_version}.",
        # The module's old name, kept: every context digest hashes these bytes.
        "# Rendered by llmops (runners/deploy/docker.py); edits are overwritten.",
        *base_lines(release.spec["docker"]["base_image"], torch),
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
        # The requirements after torch, so they never pull a CUDA build of it.
        "COPY requirements.txt /opt/llmops/requirements.txt",
        "RUN pip install -r /opt/llmops/requirements.txt",
        f"RUN useradd --system --uid {USER_ID} --create-home --home-dir /home/llmops llmops \\",
        f" && mkdir -p {CONTAINER_COLLECT_DIR} && chown {USER_ID} {CONTAINER_COLLECT_DIR}",
    ]
    # The weights change with every version, the code with llmops releases: weights first,
    # so a new version rebuilds only its own layers and a code change skips the copy.
    if with_base:  # an adapter-only model's base: the same for each of its adapters
        lines.append(f"COPY base/ {CONTAINER_BASE_DIR}/")
    if with_model:
        lines.append(f"COPY model/ {CONTAINER_MODEL_DIR}/")
    if with_adapters:
        lines.append(f"COPY adapters/ {CONTAINER_ADAPTER_DIR}/")
    lines += [
        "COPY src/ /opt/llmops/src/",
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


def place_torch(staging: Path, torch: TorchSource) -> None:
    """The wheelhouse's torch wheel into the context, where the Dockerfile mounts it from."""
    if torch.wheel is not None:
        _place(torch.wheel, staging / CONTEXT_WHEELS / torch.wheel.name)


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


def _place_adapter(folder: Path, dest: Path, base_in_image: str) -> None:
    """An adapter folder's files into the context, its adapter_config.json rewritten to name
    its base where the image has it (relative, as the registry records it)."""
    for path in _model_files(folder):
        target = dest / path.relative_to(folder)
        if path.relative_to(folder).as_posix() != ADAPTER_CONFIG:
            _place(path, target)
            continue
        config = json.loads(path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = base_in_image
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _adapter_folders(release: Release, adapter_dirs: Mapping[str, Path] | None) -> dict[str, Path]:
    """The folders of the release's adapters by served name; a missing one is an error."""
    folders = dict(adapter_dirs or {})
    missing = [n for n, _ in release.adapters if n not in folders]
    if missing:
        raise DeployError(
            f"deployment {release.name}: no folder for adapter {', '.join(missing)}; "
            "materialise the adapter versions first (apply does)"
        )
    return folders


def _write_texts(
    staging: Path,
    release: Release,
    model_dir: Path | None,
    torch: TorchSource,
    base_dir: Path | None,
    image: runtime_modules.RuntimeModules,
    config: dict[str, object],
) -> None:
    """Write the Dockerfile, .dockerignore, serve.json and requirements.txt into `staging`."""
    texts = {
        "Dockerfile": dockerfile(
            release,
            model_dir is not None,
            torch,
            with_base=base_dir is not None,
            with_adapters=bool(release.adapters),
        ),
        ".dockerignore": DOCKERIGNORE,
        "serve.json": json.dumps(config, sort_keys=True, indent=2) + "\n",
        "requirements.txt": "".join(f"{pin}\n" for pin in image.requirements),
    }
    for name, text in texts.items():
        (staging / name).write_text(text, encoding="utf-8")


def _place_weights(
    staging: Path,
    release: Release,
    model_dir: Path | None,
    base_dir: Path | None,
    adapter_dirs: Mapping[str, Path],
) -> None:
    """Place the model (and an adapter-only model's base) and the release's adapters."""
    if base_dir is not None and model_dir is not None:
        for path in _model_files(base_dir):
            _place(path, staging / "base" / path.relative_to(base_dir))
        base_in_image = os.path.relpath(CONTAINER_BASE_DIR, CONTAINER_MODEL_DIR)
        _place_adapter(model_dir, staging / "model", base_in_image)
    elif model_dir is not None:
        for path in _model_files(model_dir):
            _place(path, staging / "model" / path.relative_to(model_dir))
    for name, _ in release.adapters:
        base_in_image = os.path.relpath(CONTAINER_MODEL_DIR, adapter_container_dir(name))
        _place_adapter(adapter_dirs[name], staging / "adapters" / name, base_in_image)


def _hash_tree(staging: Path) -> tuple[dict[str, str], str]:
    """The sha256 of every file under `staging` by relative path, and their combined digest."""
    hashes = {
        p.relative_to(staging).as_posix(): _sha256(p)
        for p in sorted(staging.rglob("*"))
        if p.is_file()
    }
    digest = hashlib.sha256(
        "".join(f"{path}\0{sha}\n" for path, sha in sorted(hashes.items())).encode()
    ).hexdigest()
    return hashes, digest


def _write_manifest(
    staging: Path,
    release: Release,
    torch: TorchSource,
    tag: str,
    digest: str,
    hashes: dict[str, str],
    left_out: dict[str, str],
) -> None:
    """Write manifest.json: the release, torch's source, the tag, digest and every file's hash."""
    manifest = {
        "deployment": release.name,
        "model_version": release.model_version,
        "runtime": release.spec["runtime"],
        "torch": torch.manifest(),
        "tag": tag,
        "digest": f"sha256:{digest}",
        "build": f"docker build -t {tag} .",
        "run": run_command(release, tag),
        "files": [{"path": p, "sha256": s} for p, s in sorted(hashes.items())],
        "left_out": left_out,
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def render_context(
    out: Path,
    release: Release,
    model_dir: Path | None,
    source_root: Path | None = None,
    torch: TorchSource | None = None,
    adapter_dirs: Mapping[str, Path] | None = None,
) -> Context:
    """Write the build context for `release` into `out` (replacing an earlier context there).

    `model_dir` None renders the runtime-only image (weights from KServe's storageUri).
    `source_root` holds the `runners` package; by default the one this module comes from.
    `torch` says where the build gets torch; by default `torch_source()`.
    `adapter_dirs` are the folders of the release's adapters by served name: each goes into
    the image beside the base (the runtime loads them on it, one process serves them all).
    An adapter-only `model_dir` brings its base into the image too.
    """
    adapter_dirs = _adapter_folders(release, adapter_dirs)
    base_dir = adapter_base(model_dir) if model_dir is not None else None
    root = source_root or Path(__file__).resolve().parents[2]
    torch = torch or torch_source()
    image = runtime_modules.collect(root, ENTRY, release.spec["runtime"])
    config = container_config(release, "docker")
    tag = image_tag(release)
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_texts(staging, release, model_dir, torch, base_dir, image, config)
        for relative in image.files:
            _place(root / relative, staging / "src" / relative)
        place_torch(staging, torch)
        _place_weights(staging, release, model_dir, base_dir, adapter_dirs)
        hashes, digest = _hash_tree(staging)
        _write_manifest(staging, release, torch, tag, digest, hashes, image.left_out)
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
    parts += [f"-e {env}" for env in client_key_envs(release, "docker").values()]
    if release.spec["collect"]["enabled"]:
        parts.append(f"-v llmops-collect-{release.name}:{CONTAINER_COLLECT_DIR}")
    parts.append(tag)
    return " ".join(parts)
