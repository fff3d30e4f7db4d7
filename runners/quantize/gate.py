"""Runner `quantize`, quality gate: a GGUF artifact through llama.cpp against the version it
came from through transformers, on the same texts tokenised once (the source's tokenizer).

Two gates, each named in the result: `perplexity` (the artifact's perplexity at most
`max_perplexity_increase` worse, relative) and `token-agreement` (the share of positions where
both pick the same greedy next token at least `min_token_agreement`), the per-token
equivalent of "greedy generations non-inferior within a margin".
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runners.errors import InvalidInput
from runners.weights import SAFE_TOKENIZER, load_causal_lm, tokenizer_folder

# Scored when a spec names no texts: short, plain, varied English.
DEFAULT_TEXTS = [
    "How do I reset my password? Open Settings, then Security, and choose Reset.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Can I export my data? Yes: Settings > Data > Export writes a CSV file.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "What does the Team plan cost? Eight dollars per user per month, billed yearly.",
    "Please summarise the meeting notes in three short bullet points.",
]


def read_texts(path: Path) -> list[str]:
    """Gate texts from a JSONL file (`text`, or `prompt` + `completion`) or one per line."""
    texts: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            texts.append(line)
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise InvalidInput(f"{path}:{number}: not JSON ({err})") from err
        text = row.get("text") if isinstance(row, dict) else None
        if text is None and isinstance(row, dict) and "prompt" in row:
            text = f"{row['prompt']}{row.get('completion', '')}"
        if not isinstance(text, str):
            raise InvalidInput(
                f"{path}:{number}: needs a string field 'text' (or 'prompt' and 'completion')"
            )
        texts.append(text)
    if not texts:
        raise InvalidInput(f"{path}: no texts; the quality gate needs at least one")
    return texts


@dataclass
class GateResult:
    source_perplexity: float
    artifact_perplexity: float
    token_agreement: float
    tokens: int
    failed: list[str] = field(default_factory=list)  # gate names, with numbers

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def perplexity_increase(self) -> float:
        return self.artifact_perplexity / self.source_perplexity - 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failed": list(self.failed),
            "source_perplexity": round(self.source_perplexity, 4),
            "artifact_perplexity": round(self.artifact_perplexity, 4),
            "perplexity_increase": round(self.perplexity_increase, 5),
            "token_agreement": round(self.token_agreement, 4),
            "tokens": self.tokens,
        }


def _nll_and_argmax(logits: Any, ids: list[int]) -> tuple[float, list[int]]:
    import numpy as np

    rows = np.asarray(logits, dtype=np.float64)[: len(ids) - 1]
    shifted = rows - rows.max(axis=1, keepdims=True)
    logz = np.log(np.exp(shifted).sum(axis=1))
    picked = shifted[np.arange(len(ids) - 1), ids[1:]] - logz
    return float(-picked.sum()), [int(i) for i in rows.argmax(axis=1)]


def quality_gate(
    source: Path | str,
    artifact: Path | str,
    texts: list[str],
    max_perplexity_increase: float = 0.03,
    min_token_agreement: float = 0.9,
) -> GateResult:
    """Score `texts` with the source folder (transformers) and the GGUF (llama.cpp)."""
    # llama.cpp's OpenMP threads spin less at barriers on a shared CPU, as the llama-cpp
    # serving backend sets (runners/serve/backend_llama_cpp.py, GOMP_SPINCOUNT)
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")
    import llama_cpp
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder(source)), **SAFE_TOKENIZER)
    model = load_causal_lm(source, merge=True, dtype=torch.float32).eval()
    encoded = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    encoded = [ids for ids in encoded if len(ids) > 1]
    if not encoded:
        raise InvalidInput("the quality gate's texts are empty once tokenised; give longer ones")
    longest = max(len(ids) for ids in encoded)
    llm = llama_cpp.Llama(
        model_path=str(artifact),
        n_ctx=max(64, longest),
        n_batch=max(64, longest),
        logits_all=True,
        verbose=False,
        seed=0,
    )
    nll_src = nll_art = 0.0
    same = count = 0
    try:
        for ids in encoded:
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0].numpy()
            src, src_top = _nll_and_argmax(logits, ids)
            llm.reset()
            llm.eval(ids)
            art, art_top = _nll_and_argmax(llm.scores[: len(ids)], ids)
            nll_src, nll_art = nll_src + src, nll_art + art
            same += sum(a == b for a, b in zip(src_top, art_top, strict=True))
            count += len(ids) - 1
    finally:
        llm.close()
    result = GateResult(
        source_perplexity=math.exp(nll_src / count),
        artifact_perplexity=math.exp(nll_art / count),
        token_agreement=same / count,
        tokens=count,
    )
    if result.perplexity_increase > max_perplexity_increase:
        result.failed.append(
            f"perplexity: {result.artifact_perplexity:.3f} vs {result.source_perplexity:.3f} "
            f"(+{result.perplexity_increase:.2%}, at most +{max_perplexity_increase:.2%})"
        )
    if result.token_agreement < min_token_agreement:
        result.failed.append(
            f"token-agreement: {result.token_agreement:.2%} of next tokens match the source "
            f"(at least {min_token_agreement:.2%})"
        )
    return result
