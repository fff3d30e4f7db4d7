"""Runner `quantize`, export: a transformers Llama folder (or adapter, merged in memory) -> an
F16 GGUF written with the `gguf` package, then quantised by llama.cpp (llama_model_quantize).

llama.cpp's `convert_hf_to_gguf.py` ships only in llama.cpp's source tree, not in the
llama-cpp-python wheel nor the `gguf` package, so this module does its Llama path itself with
the same building blocks: `gguf.GGUFWriter`, `gguf.TensorNameMap` (HF -> GGUF tensor names),
`gguf.vocab.SpecialVocab` (merges, special tokens, chat template), and the converter's q/k
row permutation (HF stores rotary halves, GGUF interleaves them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runners.errors import InvalidInput
from runners.weights import adapter_base, load_causal_lm, tokenizer_folder

# llama.cpp file types (llama_ftype) per quantisation type a spec may ask for.
QUANT_TYPES = {"f16": 1, "q8_0": 7, "q4_k_m": 15}
ARCHITECTURES = ("LlamaForCausalLM",)


class QuantizeError(InvalidInput):
    """The model cannot be exported or quantised; the message says why and what to do."""


def _permute(weights: Any, n_head: int) -> Any:
    """HF's rotary layout (two halves) -> llama.cpp's interleaved pairs, per head."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _rope_theta(config: dict[str, Any], folder: Path) -> float:
    """The rotary base; transformers 5 keeps it under `rope_parameters`. Scaled rotary
    embeddings (llama3, yarn, ...) are not exported."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind != "default":
        raise QuantizeError(
            f"{folder}/config.json: rope type '{kind}' is not exported to GGUF by llmops "
            "(only default rotary embeddings); serve this model with runtime transformers"
        )
    return float(config.get("rope_theta") or rope.get("rope_theta") or 10000.0)


def _pre_tokenizer(saved: dict[str, Any]) -> str:
    """llama.cpp's name for the split before BPE: GPT-2's regex for a plain byte-level
    pre-tokenizer (the tiny model, SmolLM2 as transformers saves it), else its default."""
    pre = saved.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    return "default"


def _write_f16(folder: Path, dest: Path, name: str) -> None:
    import gguf
    import numpy as np
    import torch

    base = adapter_base(folder) or folder
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    architectures = config.get("architectures") or []
    if not set(architectures) & set(ARCHITECTURES):
        raise QuantizeError(
            f"{folder}: architecture {architectures or '?'} cannot be exported to GGUF by llmops "
            f"(supported: {', '.join(ARCHITECTURES)}); serve it with runtime transformers"
        )
    tokenizer_dir = tokenizer_folder(folder)
    saved = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if saved.get("model", {}).get("type") != "BPE":
        raise QuantizeError(
            f"{tokenizer_dir / 'tokenizer.json'}: model.type must be BPE (byte-level) for GGUF "
            "export by llmops; serve this model with runtime transformers"
        )
    model = load_causal_lm(folder, merge=True, dtype=torch.float32)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    n_layers = int(config["num_hidden_layers"])
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    hidden = int(config["hidden_size"])
    by_id = {int(i): t for t, i in saved["model"]["vocab"].items()}
    added = {int(t["id"]): t["content"] for t in saved.get("added_tokens", [])}
    by_id.update(added)
    size = int(config["vocab_size"])
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    types = [
        gguf.TokenType.CONTROL
        if i in added
        else gguf.TokenType.NORMAL
        if i in by_id
        else gguf.TokenType.UNUSED
        for i in range(size)
    ]

    writer = gguf.GGUFWriter(str(dest), "llama")
    writer.add_name(name)
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(hidden // n_head)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_rope_freq_base(_rope_theta(config, folder))
    writer.add_vocab_size(size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(saved))
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=size).add_to_gguf(writer, quiet=True)

    names = gguf.TensorNameMap(gguf.MODEL_ARCH.LLAMA, n_layers)
    for key, data in state.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        if key == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue  # llama.cpp reuses token_embd when the file has no output tensor
        if key.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif key.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        mapped = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise QuantizeError(f"{folder}: tensor {key} has no GGUF name for a Llama model")
        # 1-d tensors (norms) stay float32, as llama.cpp's converter keeps them.
        data = data.astype(np.float32 if data.ndim == 1 else np.float16)
        writer.add_tensor(mapped, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def export_gguf(folder: Path | str, dest: Path | str, kind: str, name: str = "model") -> Path:
    """Write `folder`'s model as one GGUF file of quantisation `kind` (f16, q8_0, q4_k_m)."""
    if kind not in QUANT_TYPES:
        raise QuantizeError(f"quantize.type '{kind}' is not one of {', '.join(QUANT_TYPES)}")
    source, out = Path(folder), Path(dest)
    out.parent.mkdir(parents=True, exist_ok=True)
    f16 = out if kind == "f16" else out.with_suffix(".f16.gguf")
    _write_f16(source, f16, name)
    if kind == "f16":
        return out
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[kind]
    params.nthread = 0
    status = llama_cpp.llama_model_quantize(
        str(f16).encode(), str(out).encode(), llama_cpp.byref(params)
    )
    f16.unlink(missing_ok=True)
    if status != 0:
        raise QuantizeError(f"llama.cpp could not quantise {source} to {kind} (status {status})")
    return out
