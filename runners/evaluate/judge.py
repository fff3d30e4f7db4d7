"""Runner `evaluate`, LLM-as-judge: a registered model scores answers against a rubric."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from runners.weights import SAFE_MODEL, SAFE_TOKENIZER

PROMPT = (
    "You are grading an answer.\n\nRubric: {rubric}\n\nQuestion: {question}\n"
    "Reference answer: {reference}\nAnswer to grade: {answer}\n\n"
    "Reply with a score from {low} to {high} as 'Score: N', then one sentence of reason."
)
_SCORE = re.compile(r"(?:score\s*[:=]?\s*|^|\b)(\d+(?:\.\d+)?)\s*(?:/\s*(\d+))?", re.I | re.M)


def parse_score(text: str, low: int, high: int) -> float | None:
    """The first number in range, preferring 'Score: N' and 'N/M' forms; None if none."""
    labelled = re.search(r"score\s*[:=]?\s*(\d+(?:\.\d+)?)", text, re.I)
    candidates = [labelled.group(1)] if labelled else []
    candidates += [m.group(1) for m in _SCORE.finditer(text)]
    for found in candidates:
        value = float(found)
        if low <= value <= high:
            return value
    return None


class Judge:
    def __init__(self, model_path: Path | None, config: dict[str, Any]) -> None:
        if model_path is None:
            raise ValueError("metric 'judge' needs the judge model's folder")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path), **SAFE_TOKENIZER)
        # It runs on the CPU: float32 there, whatever the judge is stored in (float16 for a
        # pulled GGUF), as evaluation and serving load models on a CPU.
        self.model = AutoModelForCausalLM.from_pretrained(
            str(model_path), dtype=torch.float32, **SAFE_MODEL
        )
        self.config = config

    def score(self, question: str, reference: str, answer: str) -> tuple[float | None, str]:
        import torch

        low, high = int(self.config.get("scale_min", 1)), int(self.config.get("scale_max", 5))
        prompt = PROMPT.format(
            rubric=self.config["rubric"],
            question=question,
            reference=reference,
            answer=answer,
            low=low,
            high=high,
        )
        inputs = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_dict=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=32, do_sample=False)
        text = self.tokenizer.decode(
            out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        return parse_score(text, low, high), text
