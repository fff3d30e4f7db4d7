"""Runner `inspect`, activations: hidden-state norms and MLP neurons on probe prompts."""

from __future__ import annotations

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


def probe(
    model: Any,
    tokenizer: Any,
    probes: list[str],
    options: ActivationOptions,
    report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run each probe once; return per-layer hidden norms, top neurons with the tokens that
    drive them, never-active fractions and massive activations (JSON-able)."""
    if not probes or not all(isinstance(p, str) and p.strip() for p in probes):
        raise InvalidInput("probes must be a non-empty list of non-empty strings")
    downs = _mlp_inputs(model)
    captured: dict[int, list[torch.Tensor]] = {layer: [] for layer in downs}
    handles = []
    for layer, module in downs.items():

        def hook(_module: Any, args: tuple[Any, ...], layer: int = layer) -> None:
            captured[layer].append(args[0][0].detach().float().clone())

        handles.append(module.register_forward_pre_hook(hook))
    token_rows: list[dict[str, Any]] = []  # one per probe token: prompt, position, id, text
    hidden_norms: list[list[list[float]]] = []
    massive: dict[int, dict[str, Any]] = {}
    try:
        for p_index, text in enumerate(probes):
            encoded = tokenizer(
                text, return_tensors="pt", truncation=True, max_length=options.max_tokens
            )
            ids = encoded["input_ids"]
            with torch.no_grad():
                out = model(**encoded, output_hidden_states=True)
            id_list = [int(i) for i in ids[0]]
            for pos, tid in enumerate(id_list):
                token_rows.append(
                    {
                        "prompt": p_index,
                        "position": pos,
                        "token_id": tid,
                        "token": tokenizer.decode([tid]),
                    }
                )
            norms = []
            for h_index, hidden in enumerate(out.hidden_states):
                h = hidden[0].float()
                norms.append([round(float(v), 5) for v in h.norm(dim=-1)])
                values = h.abs()
                median = float(values.median())
                top = float(values.max())
                ratio = top / median if median > 0 else float("inf") if top > 0 else 0.0
                if ratio > options.massive_ratio and h_index > 0:
                    flat = int(values.argmax())
                    pos, dim = divmod(flat, h.shape[1])
                    seen = massive.get(h_index - 1)
                    if seen is None or ratio > seen["ratio"]:
                        massive[h_index - 1] = {
                            "layer": h_index - 1,
                            "prompt": p_index,
                            "position": pos,
                            "token": tokenizer.decode([id_list[pos]]),
                            "dim": dim,
                            "value": float(h[pos, dim]),
                            "median_abs": median,
                            "ratio": round(ratio, 2) if ratio != float("inf") else None,
                        }
            hidden_norms.append(norms)
            if report is not None:
                report(f"probes: {p_index + 1}/{len(probes)}")
    finally:
        for handle in handles:
            handle.remove()
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
    first_tokens = [row["token"] for row in token_rows if row["prompt"] == 0]
    return {
        "probes": probes,
        "tokens": first_tokens,
        "hidden_norms": hidden_norms,  # per probe: (layers + 1) x tokens, row 0 = embeddings
        "mlp": layers,
        "neuron_max": neuron_max,  # layers x neurons: max |activation| over all probe tokens
        "massive": [massive[k] for k in sorted(massive)],
        "options": {
            "top_k": options.top_k,
            "eps": options.eps,
            "massive_ratio": options.massive_ratio,
        },
    }
