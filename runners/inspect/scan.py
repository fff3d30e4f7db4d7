"""Runner `inspect`, entry point: one brain scan of a model folder -> scan.json and PNGs."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from runners.errors import InvalidInput
from runners.inspect.activations import (
    ActivationOptions,
    ProbeRun,
    load_model,
    neuron_changes,
    probe_run,
)
from runners.inspect.alarms import AlarmOptions, all_alarms
from runners.inspect.deltas import adapter_deltas, full_deltas, load_adapter
from runners.inspect.plots import heatmaps, write_pngs
from runners.inspect.weights import (
    TensorStore,
    check_folder,
    is_adapter,
    iter_weight_rows,
    parse_name,
)
from runners.weights import adapter_base

SCAN_VERSION = 2  # bump when the numbers a scan produces change, so cached scans are redone
WW_MISSING = "weightwatcher is not installed: pip install weightwatcher"


@dataclass
class ScanInputs:
    model: Path
    out: Path
    base: Path | None = None
    probes: list[str] | None = None
    top_k: int = 5
    bins: int = 50
    spread_k: float = 6.0
    weightwatcher: bool = False
    report: Callable[[str], None] | None = None
    eps: float = 1e-6
    massive_ratio: float = 100.0
    dead_fraction: float = 0.5
    threads: int | None = 1  # torch threads for the weight passes (None: leave torch's own)

    def options(self) -> dict[str, Any]:
        """The settings that change the result (for scan_digest): not paths, not `report`."""
        return {
            "top_k": self.top_k,
            "bins": self.bins,
            "spread_k": self.spread_k,
            "weightwatcher": self.weightwatcher,
            "eps": self.eps,
            "massive_ratio": self.massive_ratio,
            "dead_fraction": self.dead_fraction,
        }


def scan_digest(
    model_digest: str, base_digest: str | None, probes: list[str] | None, options: dict[str, Any]
) -> str:
    """Digest of everything a scan depends on ("sha256:" + hex over canonical JSON), so a
    stored scan can be reused when model, base, probes, options and scan version match."""
    payload = {
        "scan_version": SCAN_VERSION,
        "model": model_digest,
        "base": base_digest,
        "probes": list(probes) if probes else None,
        "options": options,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and Inf become None, tuples lists, Paths strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _adapter_base(model: Path, base: Path | None) -> Path:
    if base is not None:
        return base
    try:
        named = adapter_base(model)  # absolute, or relative to the adapter's folder
    except InvalidInput as err:
        raise InvalidInput(f"{err}; or pass the base model (--against BASE)") from err
    assert named is not None  # only called on an adapter folder
    return named


def _layers_changed(
    deltas: list[dict[str, Any]], base_norms: dict[str, float]
) -> list[dict[str, Any]]:
    """Per layer: sqrt(sum ||W - W0||^2) / sqrt(sum ||W0||^2) over all of the layer's tensors."""
    delta_sq: dict[int, float] = defaultdict(float)
    base_sq: dict[int, float] = defaultdict(float)
    for name, norm in base_norms.items():
        layer, _ = parse_name(name)
        if layer is not None:
            base_sq[layer] += norm * norm
    for row in deltas:
        if row.get("layer") is not None and row.get("delta_frobenius") is not None:
            delta_sq[row["layer"]] += row["delta_frobenius"] ** 2
    out = [
        {"layer": layer, "relative_change": math.sqrt(delta_sq.get(layer, 0.0) / total)}
        for layer, total in base_sq.items()
        if total > 0
    ]
    return sorted(out, key=lambda r: (-r["relative_change"], r["layer"]))


def _modules_changed(
    deltas: list[dict[str, Any]], base_norms: dict[str, float]
) -> list[dict[str, Any]]:
    """Per module name (q_proj, ...): sqrt(sum ||W - W0||^2) / sqrt(sum ||W0||^2) over its
    tensors in every layer, and how many layers changed; largest first, unchanged left out."""
    delta_sq: dict[str, float] = defaultdict(float)
    base_sq: dict[str, float] = defaultdict(float)
    layers: dict[str, set[int]] = defaultdict(set)
    for row in deltas:
        fro = row.get("delta_frobenius")
        if not fro:
            continue
        delta_sq[row["module"]] += fro * fro
        base_sq[row["module"]] += (base_norms.get(row["tensor"]) or 0.0) ** 2
        if row.get("layer") is not None:
            layers[row["module"]].add(row["layer"])
    out = [
        {
            "module": module,
            "relative_change": math.sqrt(d / base_sq[module]) if base_sq[module] else None,
            "delta_frobenius": math.sqrt(d),
            "layers": len(layers[module]),
        }
        for module, d in delta_sq.items()
    ]
    return sorted(out, key=lambda r: (-(r["relative_change"] or math.inf), r["module"]))


def _compare_probes(tuned: ProbeRun, reference: ProbeRun) -> dict[str, Any]:
    """The base's side of the probes, for the alarms: its own massive activations and dead
    neuron fractions; and, on each of the fine-tune's massive hits, the base's value and
    ratio at the same (layer, probe, token, dim) ("base_value", "base_ratio")."""
    same_tokens = tuned.token_ids == reference.token_ids
    for hit, seen in zip(tuned.result["massive"], reference.watched, strict=True):
        if not same_tokens or seen is None:
            continue
        value, median = seen
        hit["base_value"] = value
        hit["base_ratio"] = abs(value) / median if median > 0 else (math.inf if value else 0.0)
    return {
        "massive": reference.result["massive"],
        "mlp": [
            {k: m[k] for k in ("layer", "neurons", "never_active_fraction")}
            for m in reference.result["mlp"]
        ],
        "same_tokens": same_tokens,
    }


def run_weightwatcher(model: Path, base: Path | None) -> dict[str, Any]:
    """Power-law alpha per layer from weightwatcher, when installed (an optional extra)."""
    try:
        import weightwatcher as ww  # type: ignore[import-not-found]
    except ImportError:
        return {"skipped": WW_MISSING}
    frame = ww.WeightWatcher(model=_load_plain(model, base)).analyze()
    layers = []
    for record in frame.to_dict("records"):
        name = str(record.get("longname") or record.get("name") or record.get("layer_id"))
        layer, module = parse_name(name + ".weight")
        alpha = record.get("alpha")
        layers.append(
            {
                "name": name,
                "layer": layer,
                "module": module,
                "alpha": float(alpha) if alpha is not None else None,
            }
        )
    return {"layers": layers}


def _load_plain(model: Path, base: Path | None) -> Any:
    from transformers import AutoModelForCausalLM

    if is_adapter(model):
        from peft import PeftModel

        if base is None:
            raise InvalidInput(f"{model} is an adapter: pass its base model")
        loaded = AutoModelForCausalLM.from_pretrained(
            str(base), dtype=torch.float32, use_safetensors=True, trust_remote_code=False
        )
        return PeftModel.from_pretrained(loaded, str(model)).merge_and_unload()
    return AutoModelForCausalLM.from_pretrained(
        str(model), dtype=torch.float32, use_safetensors=True, trust_remote_code=False
    )


def _weight_passes(
    inputs: ScanInputs, kind: str, base: Path | None, say: Callable[[str], None]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
    """Weights (an adapter's effective ones, W0 + delta), deltas, and base norms per tensor.

    Runs with `inputs.threads` torch threads: on 2 busy cores one thread was 10x faster than
    two for these many small LAPACK calls (OpenMP threads spin waiting for each other).
    """
    base_norms: dict[str, float] = {}
    deltas: list[dict[str, Any]] = []
    weights: list[dict[str, Any]]
    if kind == "adapter":
        assert base is not None
        base_store = TensorStore(base)
        adapter = load_adapter(inputs.model, base_store)

        def effective(name: str, tensor: torch.Tensor) -> torch.Tensor:
            if tensor.is_floating_point():
                base_norms[name] = float(
                    torch.linalg.vector_norm(tensor.float(), dtype=torch.float64)
                )
            delta = adapter.delta(name, tensor)
            return tensor if delta is None else (tensor.double() + delta).to(torch.float32)

        say(f"weights: {len(base_store.names())} tensors of {base} with the adapter applied")
        weights = list(iter_weight_rows(base_store, inputs.bins, effective, say))
        say(f"deltas: {len(adapter.pairs) + len(adapter.full)} adapted tensors (low-rank path)")
        deltas = list(adapter_deltas(adapter, base_store))
    else:
        store = TensorStore(inputs.model)
        say(f"weights: {len(store.names())} tensors of {inputs.model}")
        weights = list(iter_weight_rows(store, inputs.bins, report=say))
        if base is not None:
            say(f"deltas against {base}")
            deltas = list(full_deltas(store, TensorStore(base), say))
            base_norms = {
                r["tensor"]: r["base_frobenius"] for r in deltas if r.get("base_frobenius")
            }
    return weights, deltas, base_norms


def _checked(inputs: ScanInputs) -> tuple[str, Path | None]:
    """(kind: "adapter" or "full", the base to compare with) once the options and folders are
    checked; InvalidInput says what is wrong."""
    if inputs.top_k < 1 or inputs.bins < 2 or inputs.spread_k <= 0:
        raise InvalidInput("top_k must be >= 1, bins >= 2 and spread_k > 0")
    check_folder(inputs.model)
    kind = "adapter" if is_adapter(inputs.model) else "full"
    base = _adapter_base(inputs.model, inputs.base) if kind == "adapter" else inputs.base
    if base is not None:
        check_folder(base, "base")
        if is_adapter(base):
            raise InvalidInput(f"base {base} is an adapter: pass the full model it adapts")
    return kind, base


def _activation_passes(
    inputs: ScanInputs, base: Path | None, say: Callable[[str], None]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any]]:
    """(the model's activations on the probes, the base's compared with them, the neurons
    that changed); nothing without probes, no comparison without a base."""
    activations = None
    base_probe: dict[str, Any] | None = None
    neurons: dict[str, Any] = {"neurons": [], "note": None}
    if not inputs.probes:
        return activations, base_probe, neurons
    say(f"activations on {len(inputs.probes)} probes")
    options = ActivationOptions(
        top_k=inputs.top_k, eps=inputs.eps, massive_ratio=inputs.massive_ratio
    )
    model, tokenizer = load_model(inputs.model, base)
    tuned = probe_run(model, tokenizer, inputs.probes, options, inputs.report)
    del model
    activations = tuned.result
    if base is not None:
        say(f"activations of the base {base} on the same probes")
        base_model, base_tokenizer = load_model(base, inputs.model)
        hits = tuned.result["massive"]
        watch = [(h["layer"], h["prompt"], h["position"], h["dim"]) for h in hits]
        reference = probe_run(
            base_model, base_tokenizer, inputs.probes, options, inputs.report, watch
        )
        del base_model
        base_probe = _compare_probes(tuned, reference)
        neurons = neuron_changes(tuned, reference)
    return activations, base_probe, neurons


def scan(inputs: ScanInputs) -> dict[str, Any]:
    """Scan `inputs.model` (a full model or a LoRA adapter folder), against `inputs.base` when
    given; write out/scan.json and PNGs into out/; return the same dict."""
    start = time.perf_counter()
    say = inputs.report or (lambda _msg: None)
    kind, base = _checked(inputs)
    inputs.out.mkdir(parents=True, exist_ok=True)

    threads = torch.get_num_threads()
    if inputs.threads:
        torch.set_num_threads(inputs.threads)
    try:
        weights, deltas, base_norms = _weight_passes(inputs, kind, base, say)
    finally:
        torch.set_num_threads(threads)

    activations, base_probe, neurons = _activation_passes(inputs, base, say)
    ww_result = (
        run_weightwatcher(inputs.model, base)
        if inputs.weightwatcher
        else {"skipped": "not requested (weightwatcher=True runs it; needs weightwatcher)"}
    )
    alarms, context = all_alarms(
        weights,
        deltas,
        base_norms if base is not None else None,
        activations,
        ww_result,
        AlarmOptions(spread_k=inputs.spread_k, dead_fraction=inputs.dead_fraction),
        base_probe,
    )
    maps = heatmaps(weights, deltas, activations)
    images = write_pngs(inputs.out, maps, weights, activations)
    changed = sorted({r["module"] for r in deltas if (r.get("delta_frobenius") or 0.0) > 0.0})
    layers_changed = _layers_changed(deltas, base_norms) if deltas else []
    changes = {
        "modules": _modules_changed(deltas, base_norms),
        "layers": layers_changed,
        "neurons": neurons["neurons"],
        "neurons_note": neurons["note"]
        or (None if base_probe else "neurons are compared when a base and probes are given"),
    }
    result = _clean(
        {
            "scan_version": SCAN_VERSION,
            "model": str(inputs.model),
            "base": str(base) if base is not None else None,
            "kind": kind,
            "options": inputs.options(),
            "weights": weights,
            "deltas": deltas,
            "changes": changes,
            "layers_changed_most": layers_changed,
            "modules_changed": changed,
            "activations": activations,
            "base_activations": base_probe,
            "alarms": alarms,
            "context": context,
            "heatmaps": maps,
            "images": images,
            "weightwatcher": ww_result,
            "seconds": round(time.perf_counter() - start, 3),
        }
    )
    (inputs.out / "scan.json").write_text(json.dumps(result, allow_nan=False) + "\n")
    errors = sum(a["severity"] == "error" for a in alarms)
    say(
        f"scan done in {result['seconds']} s: {errors} errors, {len(alarms) - errors} warnings"
        + (f", {len(context)} conditions the base has too" if context else "")
    )
    return result
