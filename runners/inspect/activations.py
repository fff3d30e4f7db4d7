"""Runner `inspect`, activations: hidden-state norms and MLP neurons on probe prompts, and
what changed in them between a base and its fine-tune on the same probes."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from runners.errors import InvalidInput
from runners.inspect.weights import LAYER_RE, is_adapter

# The module whose *input* is the MLP's neuron activations (act_fn(gate) * up for SwiGLU).
DOWN_PROJECTIONS = ("mlp.down_proj", "mlp.c_proj", "mlp.fc2", "mlp.dense_4h_to_h", "mlp.fc_out")
MAX_TOKENS = 256
MAX_HITS_PER_LAYER = 8  # massive dimensions kept per layer and probe (largest first)
TOP_CHANGED_NEURONS = 10


@dataclass
class ActivationOptions:
    top_k: int = 5
    eps: float = 1e-6  # a neuron with |act| <= eps on every probe token counts as never active
    massive_ratio: float = 100.0  # a hidden value > ratio x the layer's median |value|
    tokens_per_neuron: int = 3
    max_tokens: int = MAX_TOKENS


def load_model(model: Path, base: Path | None) -> tuple[Any, Any]:
    """(model, tokenizer) in float32 eval mode from safetensors; an adapter folder is loaded
    on its base and merged. Never trusts remote code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def tokenizer_from(*folders: Path | None) -> Any:
        for folder in folders:
            if folder is not None and (
                (folder / "tokenizer.json").is_file()
                or (folder / "tokenizer_config.json").is_file()
            ):
                return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        raise InvalidInput(
            f"no tokenizer in {model}"
            + (f" or {base}" if base else "")
            + ": probes need one; save the tokenizer next to the weights"
        )

    kwargs: dict[str, Any] = {
        "dtype": torch.float32,
        "use_safetensors": True,
        "trust_remote_code": False,
    }
    try:
        if is_adapter(model):
            if base is None:
                raise InvalidInput(f"{model} is an adapter: pass its base model to probe it")
            from peft import PeftModel

            loaded = AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
            loaded = PeftModel.from_pretrained(loaded, str(model)).merge_and_unload()
            tokenizer = tokenizer_from(model, base)
        else:
            loaded = AutoModelForCausalLM.from_pretrained(str(model), **kwargs)
            tokenizer = tokenizer_from(model, base)
    except (OSError, ValueError) as err:
        raise InvalidInput(f"transformers cannot load {model} for probing: {err}") from err
    loaded.eval()
    return loaded, tokenizer


def _mlp_inputs(model: Any) -> dict[int, Any]:
    """Layer number -> the MLP down projection module of that layer."""
    found: dict[int, Any] = {}
    for name, module in model.named_modules():
        if name.endswith(DOWN_PROJECTIONS):
            match = LAYER_RE.search(name + ".")
            if match:
                found.setdefault(int(match.group(1)), module)
    return found


@dataclass
class ProbeRun:
    """One model's pass over the probes: the JSON-able result, plus (not in the JSON) the MLP
    neuron activations per layer (tokens x neurons, all probes in order), the probe token ids,
    and the hidden values at the `watch` points asked for: (value, layer median |value|)."""

    result: dict[str, Any]
    acts: dict[int, torch.Tensor]
    token_ids: list[int]
    watched: list[tuple[float, float] | None]


def _massive_hits(
    h: torch.Tensor,
    layer: int,
    p_index: int,
    id_list: list[int],
    tokenizer: Any,
    options: ActivationOptions,
) -> list[dict[str, Any]]:
    """Hidden values over massive_ratio x the layer's median |value|: per dimension, its
    largest value's token (at most MAX_HITS_PER_LAYER dimensions, largest first)."""
    values = h.abs()
    median = float(values.median())
    threshold = options.massive_ratio * median
    peak, where = values.max(dim=0)  # per dimension: largest |value| over tokens, and its token
    dims = torch.nonzero(peak > threshold).flatten().tolist()
    dims = sorted(dims, key=lambda d: -float(peak[d]))[:MAX_HITS_PER_LAYER]
    hits = []
    for dim in dims:
        pos = int(where[dim])
        ratio = float(peak[dim]) / median if median > 0 else None
        hits.append(
            {
                "layer": layer,
                "prompt": p_index,
                "position": pos,
                "token": tokenizer.decode([id_list[pos]]),
                "dim": int(dim),
                "value": float(h[pos, dim]),
                "median_abs": median,
                "ratio": round(ratio, 2) if ratio is not None else None,
            }
        )
    return hits


def probe(
    model: Any,
    tokenizer: Any,
    probes: list[str],
    options: ActivationOptions,
    report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run each probe once; return per-layer hidden norms, top neurons with the tokens that
    drive them, never-active fractions and massive activations (JSON-able)."""
    return probe_run(model, tokenizer, probes, options, report).result


def probe_run(
    model: Any,
    tokenizer: Any,
    probes: list[str],
    options: ActivationOptions,
    report: Callable[[str], None] | None = None,
    watch: list[tuple[int, int, int, int]] | None = None,
) -> ProbeRun:
    """`probe`, keeping the neuron activations, and reading the hidden value at each `watch`
    point (layer, prompt, position, dim) with its layer's median |value| (None where the
    point does not exist in this model's pass, e.g. another tokenizer)."""
    if not probes or not all(isinstance(p, str) and p.strip() for p in probes):
        raise InvalidInput("probes must be a non-empty list of non-empty strings")
    captured, handles = _capture_mlp_inputs(model)
    token_rows: list[dict[str, Any]] = []  # one per probe token: prompt, position, id, text
    hidden_norms: list[list[list[float]]] = []
    massive: dict[tuple[int, int, str], dict[str, Any]] = {}  # (layer, dim, token) -> largest
    wanted: dict[int, list[int]] = {}  # prompt -> indices into watch
    for w_index, (_layer, w_prompt, _pos, _dim) in enumerate(watch or []):
        wanted.setdefault(w_prompt, []).append(w_index)
    watched: list[tuple[float, float] | None] = [None] * len(watch or [])
    try:
        for p_index, text in enumerate(probes):
            encoded = tokenizer(
                text, return_tensors="pt", truncation=True, max_length=options.max_tokens
            )
            ids = encoded["input_ids"]
            with torch.no_grad():
                out = model(**encoded, output_hidden_states=True)
            id_list = [int(i) for i in ids[0]]
            token_rows += _token_rows(p_index, id_list, tokenizer)
            norms = []
            for h_index, hidden in enumerate(out.hidden_states):
                h = hidden[0].float()
                norms.append([round(float(v), 5) for v in h.norm(dim=-1)])
                if h_index == 0:
                    continue
                for hit in _massive_hits(h, h_index - 1, p_index, id_list, tokenizer, options):
                    key = (hit["layer"], hit["dim"], hit["token"])
                    seen = massive.get(key)
                    if seen is None or _ratio(hit) > _ratio(seen):
                        massive[key] = hit
                for w_index in wanted.get(p_index, []):
                    w_layer, _, w_pos, w_dim = (watch or [])[w_index]
                    if w_layer == h_index - 1 and w_pos < h.shape[0] and w_dim < h.shape[1]:
                        watched[w_index] = (float(h[w_pos, w_dim]), float(h.abs().median()))
            hidden_norms.append(norms)
            if report is not None:
                report(f"probes: {p_index + 1}/{len(probes)}")
    finally:
        for handle in handles:
            handle.remove()
    layers, neuron_max = _neuron_summary(captured, token_rows, options)
    first_tokens = [row["token"] for row in token_rows if row["prompt"] == 0]
    result = {
        "probes": probes,
        "tokens": first_tokens,
        "token_rows": token_rows,
        "hidden_norms": hidden_norms,  # per probe: (layers + 1) x tokens, row 0 = embeddings
        "mlp": layers,
        "neuron_max": neuron_max,  # layers x neurons: max |activation| over all probe tokens
        "massive": sorted(massive.values(), key=lambda m: (m["layer"], -_ratio(m), m["dim"])),
        "options": {
            "top_k": options.top_k,
            "eps": options.eps,
            "massive_ratio": options.massive_ratio,
        },
    }
    acts = {layer: torch.cat(rows, dim=0) for layer, rows in captured.items() if rows}
    return ProbeRun(result, acts, [row["token_id"] for row in token_rows], watched)


def _capture_mlp_inputs(model: Any) -> tuple[dict[int, list[torch.Tensor]], list[Any]]:
    """Hooks that keep every MLP's neuron activations by layer; (captured, hook handles)."""
    downs = _mlp_inputs(model)
    captured: dict[int, list[torch.Tensor]] = {layer: [] for layer in downs}
    handles = []
    for layer, module in downs.items():

        def hook(_module: Any, args: tuple[Any, ...], layer: int = layer) -> None:
            captured[layer].append(args[0][0].detach().float().clone())

        handles.append(module.register_forward_pre_hook(hook))
    return captured, handles


def _token_rows(p_index: int, id_list: list[int], tokenizer: Any) -> list[dict[str, Any]]:
    """One row per token of a probe: prompt, position, id, text."""
    return [
        {"prompt": p_index, "position": pos, "token_id": tid, "token": tokenizer.decode([tid])}
        for pos, tid in enumerate(id_list)
    ]


def _neuron_summary(
    captured: dict[int, list[torch.Tensor]],
    token_rows: list[dict[str, Any]],
    options: ActivationOptions,
) -> tuple[list[dict[str, Any]], list[list[float]]]:
    """Per layer: the top neurons with the tokens that drive them and the never-active
    fraction; and every neuron's max |activation| over all probe tokens."""
    layers = []
    neuron_max: list[list[float]] = []
    for layer in sorted(captured):
        acts = torch.cat(captured[layer], dim=0)  # tokens x neurons
        magnitude = acts.abs()
        peak, _ = magnitude.max(dim=0)
        k = min(options.top_k, peak.numel())
        top_neurons = []
        for neuron in torch.topk(peak, k).indices.tolist():
            column = magnitude[:, neuron]
            n_tok = min(options.tokens_per_neuron, column.numel())
            tokens = []
            for t_index in torch.topk(column, n_tok).indices.tolist():
                tokens.append({**token_rows[t_index], "activation": float(acts[t_index, neuron])})
            top_neurons.append({"neuron": neuron, "max_abs": float(peak[neuron]), "tokens": tokens})
        dead = float((peak <= options.eps).float().mean())
        layers.append(
            {
                "layer": layer,
                "neurons": int(peak.numel()),
                "never_active_fraction": dead,
                "top_neurons": top_neurons,
            }
        )
        neuron_max.append([float(f"{v:.4g}") for v in peak.tolist()])
    return layers, neuron_max


def _ratio(hit: dict[str, Any]) -> float:
    """A hit's ratio to its layer's median, infinite where the median is 0 (ratio None)."""
    return math.inf if hit.get("ratio") is None else float(hit["ratio"])


def neuron_changes(
    tuned: ProbeRun, base: ProbeRun, top: int = TOP_CHANGED_NEURONS
) -> dict[str, Any]:
    """The MLP neurons whose activation changed most between base and fine-tune on the same
    probe tokens. Score: max over tokens |a - a0|, over the layer's typical base activation
    (median over its neurons of max |a0|), so layers of different scale compare. Each neuron
    comes with the tokens where it changed most and its base and tuned values there."""
    if tuned.token_ids != base.token_ids:
        return {
            "neurons": [],
            "note": "the base tokenizes the probes differently: neurons are not compared",
        }
    rows = tuned.result["token_rows"]
    found: list[dict[str, Any]] = []
    for layer in sorted(set(tuned.acts) & set(base.acts)):
        a, a0 = tuned.acts[layer], base.acts[layer]
        if a.shape != a0.shape:
            continue
        diff = (a - a0).abs()
        scale = max(float(a0.abs().max(dim=0).values.median()), 1e-12)
        peak, _ = diff.max(dim=0)
        k = min(top, peak.numel())
        for neuron in torch.topk(peak, k).indices.tolist():
            column = diff[:, neuron]
            tokens = []
            for t_index in torch.topk(column, min(3, column.numel())).indices.tolist():
                tokens.append(
                    {
                        **rows[t_index],
                        "base": float(a0[t_index, neuron]),
                        "tuned": float(a[t_index, neuron]),
                    }
                )
            found.append(
                {
                    "layer": layer,
                    "neuron": int(neuron),
                    "max_change": float(peak[neuron]),
                    "score": float(peak[neuron]) / scale,
                    "tokens": tokens,
                }
            )
    found.sort(key=lambda n: (-n["score"], n["layer"], n["neuron"]))
    return {"neurons": found[:top], "note": None}
