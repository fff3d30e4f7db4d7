"""Runner `pull`, GGUF: convert once to safetensors with tokenizer and chat template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runners.pull.options import FetchOptions, PullError

DTYPES = ("float32", "bfloat16", "float16")
# What a GGUF tensor type needs once de-quantised: float types keep their width, and the
# quantised ones (Q4_*, Q8_0, K-quants...) hold fewer bits than float16 carries.
UNQUANTISED = {"F32": "float32", "F64": "float32", "BF16": "bfloat16"}


def stored_dtype(path: Path, requested: str) -> str:
    """The dtype the converted weights are saved in: the spec's, or for `auto` the one the
    file's tensors need (most elements decide): float32 for an F32 file, bfloat16 for BF16,
    float16 for F16 and every quantised type, never wider than the file holds."""
    if requested != "auto":
        return requested
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    for tensor in GGUFReader(str(path)).tensors:
        kind = UNQUANTISED.get(tensor.tensor_type.name, "float16")
        counts[kind] = counts.get(kind, 0) + int(tensor.n_elements)
    return max(counts, key=lambda kind: counts[kind]) if counts else "float16"


def gguf_header(path: Path) -> dict[str, Any]:
    """Architecture, file type (quantisation) and license from the GGUF metadata."""
    from gguf import GGUFReader
    from gguf.constants import LlamaFileType

    reader = GGUFReader(str(path))
    out: dict[str, Any] = {}
    for key, name in (
        ("general.architecture", "gguf_architecture"),
        ("general.license", "license"),
        ("general.name", "gguf_name"),
    ):
        field = reader.fields.get(key)
        if field is not None:
            out[name] = field.contents()
    file_type = reader.fields.get("general.file_type")
    if file_type is not None:
        value = int(file_type.contents())
        try:
            out["source_quantization"] = LlamaFileType(value).name.removeprefix("MOSTLY_")
        except ValueError:
            out["source_quantization"] = str(value)
    return out


def convert_gguf(path: Path, dest: Path, options: FetchOptions) -> dict[str, Any]:
    """transformers de-quantises the GGUF tensors; the result is saved as safetensors.

    save_pretrained refuses a GGUF-loaded model while its quantizer is attached, so the
    quantizer and quantization_config are dropped: the saved weights are plain tensors.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    header = gguf_header(path)
    name = stored_dtype(path, options.dtype)
    if name not in DTYPES:
        raise PullError(f"dtype '{options.dtype}' is not one of auto, {', '.join(DTYPES)}")
    dtype = getattr(torch, name)
    options.report(
        f"converting {path.name} (GGUF {header.get('source_quantization', '?')}) "
        f"to {name} safetensors"
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=dtype
        )
    except (ValueError, KeyError, OSError, RuntimeError) as err:
        raise PullError(f"transformers cannot load {path.name}: {err}") from err
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(dest), safe_serialization=True)
    tokenizer.save_pretrained(str(dest))
    return header
