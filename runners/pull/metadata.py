"""Runner `pull`, metadata: architecture, parameters, dtype, context, vocabulary, size."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def count_parameters(folder: Path) -> tuple[int, str | None]:
    """Parameters and the most common dtype, from the safetensors headers (no tensors read)."""
    from safetensors import safe_open

    total = 0
    dtypes: Counter[str] = Counter()
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensor = handle.get_slice(name)
                count = 1
                for dim in tensor.get_shape():
                    count *= dim
                total += count
                dtypes[str(tensor.get_dtype())] += count
    dtype = dtypes.most_common(1)[0][0] if dtypes else None
    names = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}
    return total, names.get(dtype or "", dtype)


def _license_from_readme(folder: Path) -> str | None:
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    match = re.search(r"^---\n(.*?)\n---", readme.read_text(errors="replace"), re.S)
    if not match:
        return None
    found = re.search(r"^license:\s*(\S+)", match.group(1), re.M)
    return found.group(1).strip("'\"") if found else None


def inspect_folder(folder: Path) -> dict[str, Any]:
    config = _json(folder / "config.json")
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    tokenizer_config = _json(folder / "tokenizer_config.json")
    parameters, dtype = count_parameters(folder)
    quant = config.get("quantization_config")
    context = next((config[k] for k in CONTEXT_KEYS if isinstance(config.get(k), int)), None)
    if context is None:
        context = next((text_config[k] for k in CONTEXT_KEYS if k in text_config), None)
    files = [p for p in folder.rglob("*") if p.is_file()]
    return {
        "architecture": (config.get("architectures") or [None])[0],
        "model_type": config.get("model_type"),
        "parameters": parameters or None,
        "dtype": dtype or config.get("dtype") or config.get("torch_dtype"),
        "quantization": quant.get("quant_method") if isinstance(quant, dict) else None,
        "context_length": context,
        "vocab_size": config.get("vocab_size") or text_config.get("vocab_size"),
        "chat_template": bool(
            (folder / "chat_template.jinja").is_file()
            or (folder / "chat_template.json").is_file()
            or tokenizer_config.get("chat_template")
        ),
        "license": _license_from_readme(folder),
        "size_bytes": sum(p.stat().st_size for p in files),
    }
