"""runners/pull/gguf.py `stored_dtype`: a de-quantised GGUF is stored in what its tensors
need (float16 for quantised and F16 files, bfloat16 for BF16, float32 only for F32), or in the
Model spec's explicit dtype."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runners.pull.gguf import stored_dtype


def _gguf(path: Path, kind: str) -> Path:
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    writer = GGUFWriter(str(path), "llama")
    weights = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    norm = np.ones(64, dtype=np.float32)  # norms stay F32 in every real GGUF
    if kind == "F32":
        writer.add_tensor("blk.0.attn_q.weight", weights)
    elif kind == "F16":
        writer.add_tensor("blk.0.attn_q.weight", weights.astype(np.float16))
    else:
        qtype = GGMLQuantizationType[kind]
        writer.add_tensor("blk.0.attn_q.weight", quantize(weights, qtype), raw_dtype=qtype)
    writer.add_tensor("blk.0.attn_norm.weight", norm)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("kind", "expected"), [("F32", "float32"), ("F16", "float16"), ("Q8_0", "float16")]
)
def test_auto_follows_the_files_tensors(tmp_path: Path, kind: str, expected: str) -> None:
    assert stored_dtype(_gguf(tmp_path / "m.gguf", kind), "auto") == expected


def test_an_explicit_dtype_wins(tmp_path: Path) -> None:
    assert stored_dtype(_gguf(tmp_path / "m.gguf", "Q8_0"), "float32") == "float32"
