"""Runner `quantize`: a registered model version -> a GGUF file (f16, q8_0, q4_k_m) and its gate."""

from runners.quantize.gate import DEFAULT_TEXTS, GateResult, quality_gate, read_texts
from runners.quantize.gguf import QUANT_TYPES, QuantizeError, export_gguf

__all__ = [
    "DEFAULT_TEXTS",
    "QUANT_TYPES",
    "GateResult",
    "QuantizeError",
    "export_gguf",
    "quality_gate",
    "read_texts",
]
