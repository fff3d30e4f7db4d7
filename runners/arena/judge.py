"""Runner `arena`, pairwise judge: a judge model picks the better of two answers, both orders.

The prompt follows FastChat's MT-bench pairwise judge: a final verdict `[[A]]` (the first
answer is better), `[[B]]` (the second), `[[C]]` (a tie) or `[[D]]` (both are bad). Every
battle is judged twice, with each answer shown first once, and the two verdicts combined,
so a judge that favours a position gives a tie instead of a winner.

When the prompt set carries a reference answer, the judge is shown it (MT-Bench's
reference-guided pairwise prompt). `MetricJudge` needs no judge model: it scores each answer
against the reference (ROUGE-L, token F1 or keyword recall) and prefers the higher score
when the two differ by more than a tie band.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runners.arena.outcomes import Winner
from runners.errors import InvalidInput
from runners.evaluate import metrics
from runners.weights import SAFE_MODEL, SAFE_TOKENIZER

Verdict = Literal["A", "B", "tie", "both_bad"]

PAIRWISE_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by "
    "two AI assistants to the user question displayed below. Judge by this rubric: {rubric}\n"
    "Avoid any position bias: the order in which the responses were presented must not "
    "influence your decision, nor their length, nor the assistants' names.\n"
    "Output your final verdict first, strictly in this format: [[A]] if assistant A is "
    "better, [[B]] if assistant B is better, [[C]] for a tie, [[D]] if both responses are "
    "bad. Then give one short sentence of reason.\n\n"
    "[User Question]\n{question}\n\n"
    "[The Start of Assistant A's Answer]\n{first}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{second}\n[The End of Assistant B's Answer]"
)

# MT-Bench's reference-guided pairwise judge ("pair-math-v1"), with this rubric's verdicts.
PAIRWISE_REFERENCE_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by "
    "two AI assistants to the user question displayed below. Judge by this rubric: {rubric}\n"
    "A reference answer is given: compare both assistants' answers with it, and identify "
    "and correct any mistakes. Avoid any position bias: the order in which the responses "
    "were presented must not influence your decision, nor their length, nor the assistants' "
    "names.\n"
    "Output your final verdict first, strictly in this format: [[A]] if assistant A is "
    "better, [[B]] if assistant B is better, [[C]] for a tie, [[D]] if both responses are "
    "bad. Then give one short sentence of reason.\n\n"
    "[User Question]\n{question}\n\n"
    "[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n\n"
    "[The Start of Assistant A's Answer]\n{first}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{second}\n[The End of Assistant B's Answer]"
)


@dataclass(frozen=True)
class Reference:
    """What a prompt's answer should say: a reference answer, and keywords it must contain."""

    answer: str | None = None
    keywords: tuple[str, ...] = ()


def judge_prompt(
    rubric: str, question: str, first: str, second: str, reference: Reference | None = None
) -> str:
    """The pairwise prompt, reference-guided when a reference answer is given."""
    if reference is not None and reference.answer:
        return PAIRWISE_REFERENCE_PROMPT.format(
            rubric=rubric,
            question=question,
            reference=reference.answer,
            first=first,
            second=second,
        )
    return PAIRWISE_PROMPT.format(rubric=rubric, question=question, first=first, second=second)


_WORDS: dict[str, Verdict] = {
    "a": "A",
    "b": "B",
    "c": "tie",
    "tie": "tie",
    "d": "both_bad",
    "both bad": "both_bad",
    "bothbad": "both_bad",
    "both_bad": "both_bad",
    "both-bad": "both_bad",
}
_ANSWER = r"(?:[abcd]|tie|both[ _-]?bad)"
# "[[A]]", "[[ tie ]]": FastChat's bracketed form.
_BRACKETED = re.compile(r"\[\[\s*(" + _ANSWER + r")\s*\]\]", re.I)
# "Verdict: A", "Final verdict - [B].", "verdict: tie": the letter must end the phrase, so
# "Verdict: A tie" or "verdict: a close call" do not count.
_LABELLED = re.compile(
    r"verdict\s*(?:is\s*)?[:=\-]?\s*\[{0,2}\s*(" + _ANSWER + r")\s*\]{0,2}\s*(?=$|[.,;!)\n])",
    re.I | re.M,
)


def parse_verdict(text: str) -> Verdict | None:
    """The judge's verdict, or None when there is none or more than one distinct verdict."""
    matches = [*_BRACKETED.finditer(text), *_LABELLED.finditer(text)]
    found = {_WORDS[m.group(1).lower()] for m in matches}
    return found.pop() if len(found) == 1 else None


def _outcome(verdict: Verdict, first: str, second: str) -> str:
    return {"A": first, "B": second, "tie": "tie", "both_bad": "tie (bothbad)"}[verdict]


def combine(first_order: Verdict | None, second_order: Verdict | None) -> Winner | None:
    """One model-level outcome from the verdicts with model_a shown first, then model_b first.

    Agreement gives that outcome; any disagreement gives "tie" (a judge that always picks
    the first position cancels out); both "both bad" gives "tie (bothbad)"; a missing
    verdict gives None (no vote).
    """
    if first_order is None or second_order is None:
        return None
    one = _outcome(first_order, "model_a", "model_b")
    two = _outcome(second_order, "model_b", "model_a")
    return one if one == two else "tie"  # type: ignore[return-value]


class PairwiseJudge:
    """A local causal LM prompted with `PAIRWISE_PROMPT` through its chat template, greedy."""

    def __init__(
        self,
        model_path: Path,
        rubric: str,
        max_new_tokens: int = 48,
        mode: Literal["generate", "likelihood"] = "generate",
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.rubric = rubric
        self.max_new_tokens = max_new_tokens
        self.mode = mode
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path), **SAFE_TOKENIZER)
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidInput(
                f"judge model {model_path}: its tokenizer has no chat template; use an "
                "instruction-tuned judge or save a template with it (tokenizer.chat_template)"
            )
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = "auto" if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(
            str(model_path), dtype=dtype, **SAFE_MODEL
        )
        self.model.to(self.device).eval()
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.tokenizer.eos_token_id

    def verdict(
        self, question: str, first: str, second: str, reference: Reference | None = None
    ) -> tuple[Verdict | None, str]:
        """The verdict on `first` (shown as A) against `second` (B), and the raw reply; the
        judge sees the reference answer when there is one."""
        prompt = judge_prompt(self.rubric, question, first, second, reference)
        inputs = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_dict=True,
            return_tensors="pt",
        ).to(self.device)
        if self.mode == "likelihood":
            return self._likeliest(inputs["input_ids"])
        with self.torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=self.pad_token_id,
            )
        text = self.tokenizer.decode(
            out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        return parse_verdict(text), text

    def _likeliest(self, prompt_ids: Any) -> tuple[Verdict, str]:
        """The verdict the judge finds most likely after 'Verdict: [[': for judges too small
        to follow the output format, the choice is read from their likelihoods (as
        multiple-choice evaluation does) instead of parsed from free text."""
        torch = self.torch
        prefix = self.tokenizer.encode("Verdict: [[", add_special_tokens=False)
        scores: dict[str, float] = {}
        for letter in LETTERS:
            option = self.tokenizer.encode(f"{letter}]]", add_special_tokens=False)
            ids = torch.cat(
                [prompt_ids[0], torch.tensor(prefix + option, device=self.device)]
            ).unsqueeze(0)
            with torch.inference_mode():
                logits = self.model(ids).logits[0, -len(option) - 1 : -1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            target = torch.tensor(option, device=self.device)
            scores[letter] = float(logprobs.gather(1, target.unsqueeze(1)).sum())
        best = max(scores, key=lambda k: scores[k])
        raw = "likelihood " + ", ".join(f"[[{k}]] {v:.3f}" for k, v in scores.items())
        return _WORDS[best.lower()], raw


LETTERS = ("A", "B", "C", "D")

METRICS = ("rouge_l", "token_f1", "keyword_recall")


class MetricJudge:
    """A deterministic judge: each answer scored against the reference, the higher score wins
    when the two differ by more than `tie_band`; both scoring 0 is "both bad"."""

    def __init__(self, metric: str, tie_band: float = 0.0) -> None:
        if metric not in METRICS:
            raise InvalidInput(f"judge metric '{metric}' is not one of {', '.join(METRICS)}")
        self.metric = metric
        self.tie_band = tie_band

    def score(self, answer: str, reference: Reference) -> float:
        if self.metric == "keyword_recall":
            if not reference.keywords:
                raise InvalidInput(
                    "judge metric keyword_recall: this prompt has no keywords; set "
                    "'prompts.keywords' to the row field listing them"
                )
            return metrics.keyword_recall(answer, list(reference.keywords))
        if not reference.answer:
            raise InvalidInput(
                f"judge metric {self.metric}: this prompt has no reference answer; set "
                "'prompts.reference' to the row field holding it"
            )
        if self.metric == "rouge_l":
            return metrics.rouge_l(answer, reference.answer)
        return metrics.token_f1(answer, reference.answer)

    def verdict(
        self, question: str, first: str, second: str, reference: Reference | None = None
    ) -> tuple[Verdict, str]:
        """A if `first` scores higher by more than the tie band, B if `second` does."""
        if reference is None:
            raise InvalidInput(
                f"judge metric {self.metric} needs a reference for every prompt; set "
                "'prompts.reference' (and 'prompts.keywords' for keyword_recall)"
            )
        one, two = self.score(first, reference), self.score(second, reference)
        verdict: Verdict
        if one - two > self.tie_band:
            verdict = "A"
        elif two - one > self.tie_band:
            verdict = "B"
        elif one <= 0 and two <= 0:
            verdict = "both_bad"
        else:
            verdict = "tie"
        return verdict, f"{self.metric} A {one:.3f}, B {two:.3f} (tie band {self.tie_band:g})"


@dataclass
class JudgedBattle:
    winner: Winner | None
    verdicts: list[dict[str, Any]] = field(default_factory=list)  # order, verdict, raw
    unparseable: int = 0


def judge_battle(
    judge: Any,
    question: str,
    answer_a: str,
    answer_b: str,
    reference: Reference | None = None,
) -> JudgedBattle:
    """Judge both orders with anything that has `.verdict(question, first, second)` (and
    takes `reference=` when the prompt has one)."""
    extra = {"reference": reference} if reference is not None else {}
    first, raw_first = judge.verdict(question, answer_a, answer_b, **extra)
    second, raw_second = judge.verdict(question, answer_b, answer_a, **extra)
    return JudgedBattle(
        winner=combine(first, second),
        verdicts=[
            {"order": "ab", "verdict": first, "raw": raw_first},
            {"order": "ba", "verdict": second, "raw": raw_second},
        ],
        unparseable=(first is None) + (second is None),
    )
