"""Runner `prepare`, augmentation: templates, paraphrases, self-instruct; a novelty filter."""

from __future__ import annotations

import random
import string
from pathlib import Path
from typing import Any

from runners.data.rows import KEY_FIELD, Row, content_hash
from runners.weights import SAFE_MODEL, SAFE_TOKENIZER

PARAPHRASE_PROMPT = (
    "Rewrite the following customer question in different words, keeping its meaning. "
    "Answer with the rewritten question only.\n\nQuestion: {text}"
)
SELF_INSTRUCT_PROMPT = (
    "Here are examples of questions customers ask:\n{examples}\n"
    "Write one new, different question a customer could ask. Answer with the question only."
)


class Novelty:
    """ROUGE-L (rouge-score) of a candidate against every text kept so far."""

    def __init__(self, existing: list[str], threshold: float) -> None:
        from rouge_score import rouge_scorer

        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self.existing = [t for t in existing if t.strip()]
        self.threshold = threshold

    def accept(self, candidate: str) -> bool:
        if not candidate.strip():
            return False
        best = max(
            (self.scorer.score(t, candidate)["rougeL"].fmeasure for t in self.existing), default=0.0
        )
        if best >= self.threshold:
            return False
        self.existing.append(candidate)
        return True


def _key_text(row: Row, fmt: str) -> str:
    value = row.get(KEY_FIELD[fmt])
    return value if isinstance(value, str) else ""


def _with_key(row: Row, fmt: str, text: str, origin: str) -> Row:
    return {**row, KEY_FIELD[fmt]: text, "_source": f"augment:{origin}"}


class Generator:
    """Chat generation with a registered model (transformers), seeded for reproducibility."""

    def __init__(self, model_path: Path, seed: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(seed)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path), **SAFE_TOKENIZER)
        self.model = AutoModelForCausalLM.from_pretrained(str(model_path), **SAFE_MODEL)
        self.model.eval()

    def __call__(self, prompt: str, max_new_tokens: int = 48) -> str:
        tok = self.tokenizer
        if tok.chat_template:
            inputs = tok.apply_chat_template(
                [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                return_dict=True,
                return_tensors="pt",
            )
        else:
            inputs = tok(prompt, return_tensors="pt")
        with self.torch.no_grad():
            out = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=True,
                temperature=0.8,
                top_p=0.95,
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
            )
        text = tok.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return text.strip().split("\n")[0].strip()


def augment(
    rows: list[Row], fmt: str, cfg: dict[str, Any], model_path: Path | None
) -> tuple[list[Row], dict]:
    method = cfg["method"]
    if fmt not in KEY_FIELD or fmt == "chat":
        raise ValueError(
            f"augmentation works on text, instruction, preference and qa rows, not {fmt}"
        )
    novelty = Novelty([_key_text(r, fmt) for r in rows], float(cfg.get("novelty_threshold", 0.7)))
    rng = random.Random(int(cfg.get("seed", 0)))
    new: list[Row] = []
    rejected = 0
    if method == "template":
        for row in rows:
            fields = {k: v for k, v in row.items() if isinstance(v, str)}
            for template in cfg["templates"]:
                try:
                    text = string.Formatter().vformat(template, (), fields)
                except (KeyError, IndexError, ValueError) as err:
                    raise ValueError(
                        f"template {template!r} names a field the rows do not have: {err}"
                    ) from err
                if novelty.accept(text):
                    new.append(_with_key(row, fmt, text, "template"))
                else:
                    rejected += 1
    else:
        if model_path is None:
            raise ValueError(f"augmentation '{method}' needs a registered model")
        generate = Generator(model_path, int(cfg.get("seed", 0)))
        count = int(cfg.get("count", 0))
        attempts = 0
        while len(new) < count and attempts < count * 3 and rows:
            attempts += 1
            if method == "paraphrase":
                seed_row = rng.choice(rows)
                text = generate(PARAPHRASE_PROMPT.format(text=_key_text(seed_row, fmt)))
                candidate = _with_key(seed_row, fmt, text, "paraphrase")
            else:
                examples = "\n".join(
                    f"- {_key_text(r, fmt)}" for r in rng.sample(rows, min(3, len(rows)))
                )
                text = generate(SELF_INSTRUCT_PROMPT.format(examples=examples))
                candidate = {
                    **rng.choice(rows),
                    KEY_FIELD[fmt]: text,
                    "_source": "augment:self_instruct",
                }
                if fmt == "instruction":
                    candidate["response"] = generate(text, max_new_tokens=96)
                    if not candidate["response"].strip():
                        rejected += 1
                        continue
            if novelty.accept(text):
                new.append(candidate)
            else:
                rejected += 1
    existing = {content_hash(r) for r in rows}
    new = [r for r in new if content_hash(r) not in existing]
    return rows + new, {"generated": len(new), "rejected_not_novel": rejected, "method": method}
