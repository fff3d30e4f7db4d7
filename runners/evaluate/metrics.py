"""Runner `evaluate`, metrics computed by llmops on generations: token F1, ROUGE-L, keywords."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

# Direction of every metric: True when a higher value is better.
HIGHER_IS_BETTER: dict[str, bool] = {
    "exact_match": True,
    "token_f1": True,
    "accuracy": True,
    "rouge_l": True,
    "keyword_recall": True,
    "judge": True,
    "throughput": True,
    "perplexity": False,
    "word_perplexity": False,
    "latency": False,
    "preference_accuracy": True,
    "logprob_margin": True,
}
# Metrics aggregated as exp(sum of -loglikelihood / sum of units) rather than a mean.
PERPLEXITIES = ("perplexity", "word_perplexity")

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, articles or extra spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


_SCORER = None


def rouge_l(prediction: str, reference: str) -> float:
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(_SCORER.score(reference, prediction)["rougeL"].fmeasure)


def keyword_recall(prediction: str, keywords: Sequence[str]) -> float:
    if not keywords:
        return 1.0
    text = prediction.lower()
    return sum(1 for k in keywords if k.lower() in text) / len(keywords)
