"""Runner `inspect`, weights: per-tensor statistics streamed from safetensors, one at a time."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from runners.errors import InvalidInput
from runners.inspect.stats import tensor_stats

INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer|decoder_layers)\.(\d+)\.")
SUFFIXES = ("weight", "bias", "scale")


def parse_name(name: str) -> tuple[int | None, str]:
    """(layer number or None, short module name) of a tensor name:
    model.layers.3.self_attn.q_proj.weight -> (3, "q_proj"); model.embed_tokens.weight ->
    (None, "embed_tokens"); transformer.h.0.attn.c_attn.bias -> (0, "c_attn")."""
    match = LAYER_RE.search(name)
    layer = int(match.group(1)) if match else None
    parts = name.split(".")
    if len(parts) > 1 and parts[-1] in SUFFIXES:
        parts = parts[:-1]
    return layer, parts[-1]


def is_adapter(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file()


def check_folder(folder: Path, what: str = "model") -> None:
    """A model folder must exist and hold safetensors (pickles are never loaded)."""
    if not folder.is_dir():
        raise InvalidInput(f"{what} folder {folder} does not exist: pass a model folder")
    if is_adapter(folder):
        if not (folder / ADAPTER_WEIGHTS).is_file():
            raise InvalidInput(
                f"{folder} has adapter_config.json but no {ADAPTER_WEIGHTS}: save the adapter "
                "with save_pretrained(safe_serialization=True); pickled .bin files are not read"
            )
        return
    if not (folder / INDEX).is_file() and not any(folder.glob("*.safetensors")):
        pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        extra = f" (found {', '.join(sorted(pickles))}; pickles are never loaded)" * bool(pickles)
        raise InvalidInput(
            f"{what} folder {folder} has no .safetensors weights{extra}: convert it to "
            "safetensors first (`llmops models pull` does this)"
        )


class TensorStore:
    """Tensors of a safetensors folder (single file or sharded with an index), read one at a
    time. Each read opens the file and closes it again, so the memory map never keeps the
    pages of tensors already read resident: peak memory is about one tensor plus its copy."""

    def __init__(self, folder: Path, files: list[Path] | None = None) -> None:
        self.folder = folder
        self.where: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        if files is None:
            files = self._files(folder)
        from safetensors import safe_open

        for path in files:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    sl = handle.get_slice(name)
                    self.where[name] = path
                    self.shapes[name] = tuple(int(d) for d in sl.get_shape())
                    self.dtypes[name] = str(sl.get_dtype())

    @staticmethod
    def _files(folder: Path) -> list[Path]:
        index = folder / INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            files = sorted({folder / f for f in weight_map.values()})
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise InvalidInput(
                    f"{folder} is missing shards {', '.join(missing)} named in {INDEX}: "
                    "pull the model again"
                )
            return files
        return sorted(p for p in folder.glob("*.safetensors") if p.name != ADAPTER_WEIGHTS)

    def names(self) -> list[str]:
        return list(self.where)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.where[name]), framework="pt") as handle:
            return handle.get_tensor(name)


def iter_weight_rows(
    store: TensorStore,
    bins: int,
    transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    report: Callable[[str], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """One statistics row per tensor; `transform(name, tensor)` may replace the tensor first
    (an adapter's effective weight W0 + delta)."""
    names = store.names()
    for i, name in enumerate(names):
        tensor = store.get(name)
        if transform is not None:
            tensor = transform(name, tensor)
        layer, module = parse_name(name)
        row: dict[str, Any] = {
            "tensor": name,
            "layer": layer,
            "module": module,
            "shape": list(tensor.shape),
            "dtype": store.dtypes[name],
        }
        if tensor.is_floating_point():
            row.update(tensor_stats(tensor, bins))
        del tensor
        if report is not None and (i + 1) % 50 == 0:
            report(f"weights: {i + 1}/{len(names)} tensors")
        yield row
