"""Runner `prepare`, augmentation: templates, paraphrases, self-instruct; a novelty filter.

The text is written by a registered model (in process) or by a teacher endpoint, any
OpenAI-compatible chat API: asked `concurrency` at a time through the request cache
(runners/chat_cache.py), so preparing again asks nothing, each attempt with its own seed so
its reply is reproducible; the teacher's identity, settings and usage go into the step's
statistics (never its key).
"""

from __future__ import annotations

import random
import string
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners.arena.chat_endpoint import ChatEndpoint
from runners.chat_cache import CachedReply, RequestCache, cached_chats, usage_of
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


SAMPLING = {"temperature": 0.8, "top_p": 0.95}  # as Generator samples


@dataclass(frozen=True)
class Teacher:
    """A teacher endpoint as the controller resolved it (a Deployment: where it runs now)."""

    base_url: str
    model: str
    api_key_env: str | None = None
    concurrency: int = 4
    retries: int = 4
    timeout_s: float = 60.0
    serves: str | None = None  # a Deployment's: the version it serves
    field: str = "endpoint"  # its settings' path in the spec, for messages

    def identity(self) -> dict[str, Any]:
        out: dict[str, Any] = {"endpoint": self.base_url.rstrip("/"), "model": self.model}
        if self.serves:
            out["serves"] = self.serves
        if self.api_key_env:
            out["api_key_env"] = self.api_key_env
        return out


class TeacherGenerator:
    """Text from a teacher endpoint through the request cache: `batch` asks several prompts
    at once (at the endpoint's concurrency); attempt n is sampled with seed `seed + n`."""

    def __init__(self, teacher: Teacher, cache_path: Path, seed: int) -> None:
        self.teacher = teacher
        self.client = ChatEndpoint(
            teacher.base_url,
            teacher.model,
            api_key_env=teacher.api_key_env,
            retries=teacher.retries,
            timeout_s=teacher.timeout_s,
            what="teacher endpoint",
            fields=teacher.field,
        )
        self.cache = RequestCache(cache_path)
        self.seed = seed
        self.asked = 0
        self.replies: list[CachedReply] = []

    def batch(self, prompts: list[str], max_new_tokens: int = 48) -> list[str]:
        """One line of text per prompt; attempt n sampled with seed `seed + n`, so a rerun
        makes the same requests and finds every reply in the cache."""
        jobs = []
        for prompt in prompts:
            self.asked += 1
            jobs.append((prompt, {**SAMPLING, "seed": self.seed + self.asked}))

        def ask(job: tuple[str, dict[str, Any]]) -> CachedReply:
            prompt, settings = job
            return cached_chats(self.client, self.cache, [prompt], max_new_tokens, settings, 1)[0]

        with ThreadPoolExecutor(max_workers=max(1, self.teacher.concurrency)) as pool:
            replies = list(pool.map(ask, jobs))
        self.replies.extend(replies)
        return [reply.reply.text.strip().split("\n")[0].strip() for reply in replies]

    def statistics(self) -> dict[str, Any]:
        return {
            **self.teacher.identity(),
            "settings": {
                **SAMPLING,
                "seed": self.seed,
                "concurrency": self.teacher.concurrency,
                "retries": self.teacher.retries,
                "timeout_s": self.teacher.timeout_s,
            },
            **usage_of(self.replies, self.client),
        }


def augment(
    rows: list[Row],
    fmt: str,
    cfg: dict[str, Any],
    model_path: Path | None,
    teacher: Teacher | None = None,
    cache_path: Path | None = None,
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
    elif teacher is not None:
        assert cache_path is not None
        asker = TeacherGenerator(teacher, cache_path, int(cfg.get("seed", 0)))
        try:
            new, rejected = _from_teacher(rows, fmt, method, cfg, rng, novelty, asker)
        finally:
            asker.cache.close()
        existing = {content_hash(r) for r in rows}
        new = [r for r in new if content_hash(r) not in existing]
        return rows + new, {
            "generated": len(new),
            "rejected_not_novel": rejected,
            "method": method,
            "teacher": asker.statistics(),
        }
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


def _from_teacher(
    rows: list[Row],
    fmt: str,
    method: str,
    cfg: dict[str, Any],
    rng: random.Random,
    novelty: Novelty,
    asker: TeacherGenerator,
) -> tuple[list[Row], int]:
    """Paraphrases or self-instruct rows from the teacher, asked a batch (its concurrency)
    at a time; every candidate through the novelty filter, as with a registered model."""
    count = int(cfg.get("count", 0))
    new: list[Row] = []
    rejected = attempts = 0
    while len(new) < count and attempts < count * 3 and rows:
        size = min(asker.teacher.concurrency, count * 3 - attempts)
        attempts += size
        seeds: list[Row] = []
        prompts: list[str] = []
        for _ in range(size):
            if method == "paraphrase":
                seed_row = rng.choice(rows)
                prompts.append(PARAPHRASE_PROMPT.format(text=_key_text(seed_row, fmt)))
            else:
                examples = "\n".join(
                    f"- {_key_text(r, fmt)}" for r in rng.sample(rows, min(3, len(rows)))
                )
                prompts.append(SELF_INSTRUCT_PROMPT.format(examples=examples))
                seed_row = rng.choice(rows)
            seeds.append(seed_row)
        candidates = []
        for seed_row, text in zip(seeds, asker.batch(prompts), strict=True):
            origin = "paraphrase" if method == "paraphrase" else "self_instruct"
            if len(new) + len(candidates) < count and novelty.accept(text):
                candidates.append(_with_key(seed_row, fmt, text, origin))
            else:
                rejected += 1
        if method == "self_instruct" and fmt == "instruction" and candidates:
            answers = asker.batch([c[KEY_FIELD[fmt]] for c in candidates], max_new_tokens=96)
            for candidate, answer in zip(candidates, answers, strict=True):
                if answer.strip():
                    new.append({**candidate, "response": answer})
                else:
                    rejected += 1
        else:
            new.extend(candidates)
    return new, rejected
