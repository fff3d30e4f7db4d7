"""Runner `inspect`, deltas: what a full fine-tune or a LoRA adapter changed against its base."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from runners.errors import InvalidInput
from runners.inspect.stats import dense_delta_stats, lora_delta_stats
from runners.inspect.weights import ADAPTER_CONFIG, ADAPTER_WEIGHTS, TensorStore, parse_name

PEFT_PREFIX = "base_model.model."
LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?:embedding_)?(?P<part>[AB])(?:\.weight)?$")


@dataclass
class LoraPair:
    """One adapted weight: delta = scaling * B @ A (transposed when the base stores it so)."""

    base_name: str
    a_key: str
    b_key: str
    alpha: float
    rank: int
    rslora: bool

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


@dataclass
class Adapter:
    folder: Path
    config: dict[str, Any]
    store: TensorStore
    pairs: dict[str, LoraPair] = field(default_factory=dict)
    full: dict[str, str] = field(default_factory=dict)  # base name -> adapter key (saved modules)

    def delta(self, base_name: str, like: torch.Tensor) -> torch.Tensor | None:
        """The dense delta for one base tensor (shape of `like`), or None if not adapted."""
        pair = self.pairs.get(base_name)
        if pair is not None:
            a = self.store.get(pair.a_key).double()
            b = self.store.get(pair.b_key).double()
            if a.shape[0] != pair.rank:  # lora_embedding_A is (r, vocab), B is (dim, r)
                a = a.T
            delta = (b @ a) * pair.scaling
            if tuple(delta.shape) != tuple(like.shape) and tuple(delta.T.shape) == tuple(
                like.shape
            ):
                delta = delta.T
            return delta
        key = self.full.get(base_name)
        if key is not None:
            return self.store.get(key).double() - like.double()
        return None


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches a module name's tail."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _resolve(name: str, base: TensorStore) -> str | None:
    """A PEFT key (without the lora part) as the base model's tensor name."""
    name = name.removeprefix(PEFT_PREFIX)
    for candidate in (name, f"model.{name}", name.removeprefix("model.")):
        if candidate in base:
            return candidate
    return None


def load_adapter(folder: Path, base: TensorStore) -> Adapter:
    """Read adapter_config.json and pair every lora_A with its lora_B and base tensor."""
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InvalidInput(f"cannot read {folder / ADAPTER_CONFIG}: {err}") from err
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise InvalidInput(
            f"{folder} is a {peft_type} adapter; only LoRA adapters can be scanned: merge it "
            "(merge_and_unload) and scan the merged folder"
        )
    if config.get("use_dora"):
        raise InvalidInput(
            f"{folder} is a DoRA adapter, which this scan does not read: merge it "
            "(merge_and_unload) and scan the merged folder against its base"
        )
    store = TensorStore(folder, [folder / ADAPTER_WEIGHTS])
    adapter = Adapter(folder, config, store)
    parts: dict[str, dict[str, str]] = {}
    for key in store.names():
        match = LORA_KEY.match(key)
        if match:
            parts.setdefault(match.group("module"), {})[match.group("part")] = key
            continue
        if "lora_magnitude_vector" in key:
            raise InvalidInput(f"{folder} has DoRA magnitudes ({key}): merge it and scan that")
        resolved = _resolve(key, base)
        if resolved is None:
            raise InvalidInput(
                f"adapter tensor {key} matches no tensor of the base model: is the base right?"
            )
        adapter.full[resolved] = key
    rslora = bool(config.get("use_rslora", False))
    for module, keys in sorted(parts.items()):
        if set(keys) != {"A", "B"}:
            raise InvalidInput(f"adapter {folder} has {module} without both lora_A and lora_B")
        resolved = _resolve(f"{module}.weight", base)
        if resolved is None:
            raise InvalidInput(
                f"adapter module {module} matches no weight of the base model: scan it against "
                "the base it was trained on"
            )
        short = module.removeprefix(PEFT_PREFIX)
        shape_a = store.shapes[keys["A"]]
        shape_b = store.shapes[keys["B"]]
        rank = shape_b[1] if len(shape_b) == 2 else shape_a[0]
        alpha = float(
            _pattern_value(config.get("alpha_pattern") or {}, short, config.get("lora_alpha", rank))
        )
        adapter.pairs[resolved] = LoraPair(resolved, keys["A"], keys["B"], alpha, rank, rslora)
    if not adapter.pairs and not adapter.full:
        raise InvalidInput(f"adapter {folder} holds no LoRA weights")
    return adapter


def _row(name: str, shape: tuple[int, ...], stats: dict[str, Any]) -> dict[str, Any]:
    layer, module = parse_name(name)
    return {"tensor": name, "layer": layer, "module": module, "shape": list(shape), **stats}


def full_deltas(
    model: TensorStore, base: TensorStore, report: Callable[[str], None] | None = None
) -> Iterator[dict[str, Any]]:
    """Per tensor of a full (or merged) model: ||W - W0||_F / ||W0||_F, the delta's spectral
    norm, effective and numerical rank. Tensors new or reshaped against the base get a row
    with a "status" and no numbers."""
    for i, name in enumerate(model.names()):
        shape = model.shapes[name]
        if name not in base:
            yield _row(name, shape, {"status": "new"})
            continue
        if base.shapes[name] != shape:
            yield _row(name, shape, {"status": "reshaped", "base_shape": list(base.shapes[name])})
            continue
        w = model.get(name)
        w0 = base.get(name)
        if not (w.is_floating_point() and w0.is_floating_point()):
            continue
        base_fro = float(torch.linalg.vector_norm(w0.float(), dtype=torch.float64))
        delta = w.float() - w0.float()
        del w, w0
        yield _row(name, shape, {"status": "compared", **dense_delta_stats(delta, base_fro, shape)})
        if report is not None and (i + 1) % 50 == 0:
            report(f"deltas: {i + 1}/{len(model.names())} tensors")


def adapter_deltas(adapter: Adapter, base: TensorStore) -> Iterator[dict[str, Any]]:
    """Per adapted weight, from the r x r products (never the full B @ A); saved full modules
    (modules_to_save) are compared densely."""
    for name, pair in adapter.pairs.items():
        a = adapter.store.get(pair.a_key)
        b = adapter.store.get(pair.b_key)
        if a.shape[0] != pair.rank:
            a = a.T
        base_fro = float(torch.linalg.vector_norm(base.get(name).float(), dtype=torch.float64))
        stats = lora_delta_stats(a, b, pair.scaling, base_fro)
        stats["lora_rank"] = pair.rank
        stats["lora_scaling"] = pair.scaling
        yield _row(name, base.shapes[name], {"status": "compared", **stats})
    for name, key in adapter.full.items():
        w0 = base.get(name)
        delta = adapter.store.get(key).float() - w0.float()
        base_fro = float(torch.linalg.vector_norm(w0.float(), dtype=torch.float64))
        shape = base.shapes[name]
        yield _row(name, shape, {"status": "compared", **dense_delta_stats(delta, base_fro, shape)})
