"""Runner `prepare`, steps: normalize, filter, dedup, near_dedup, redact_pii, decontaminate."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from runners.data.rows import Row, content_hash, full_text, map_texts, texts

TokenCounter = Callable[[str], int]


@dataclass
class StepReport:
    step: str
    rows_in: int
    rows_out: int
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "removed": self.rows_in - self.rows_out if self.rows_out <= self.rows_in else 0,
            "added": self.rows_out - self.rows_in if self.rows_out > self.rows_in else 0,
            **self.details,
        }


_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")
_NEWLINES = re.compile(r"\n{3,}")


def normalize_text(text: str, form: str, whitespace: bool) -> str:
    if form != "none":
        text = unicodedata.normalize(form, text)
    if whitespace:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
        text = _NEWLINES.sub("\n\n", text).strip()
    return text


def normalize(rows: list[Row], fmt: str, cfg: dict[str, Any]) -> tuple[list[Row], dict]:
    form, whitespace = cfg.get("unicode", "NFC"), cfg.get("whitespace", True)
    out = [map_texts(r, fmt, lambda t: normalize_text(t, form, whitespace)) for r in rows]
    changed = sum(1 for a, b in zip(rows, out, strict=True) if a != b)
    return out, {"rows_changed": changed}


def filter_rows(
    rows: list[Row], fmt: str, cfg: dict[str, Any], count_tokens: TokenCounter | None
) -> tuple[list[Row], dict]:
    patterns = [re.compile(p) for p in cfg.get("exclude_regex") or []]
    min_tokens, max_tokens = cfg.get("min_tokens"), cfg.get("max_tokens")
    if (min_tokens is not None or max_tokens is not None) and count_tokens is None:
        raise ValueError("token-length filters need a tokenizer: set 'tokenizer' on the Dataset")
    reasons: Counter[str] = Counter()
    kept = []
    for row in rows:
        parts = list(texts(row, fmt))
        if cfg.get("drop_empty", True) and (not parts or any(not p.strip() for p in parts)):
            reasons["empty"] += 1
            continue
        if any(p.search(t) for p in patterns for t in parts):
            reasons["regex"] += 1
            continue
        if count_tokens is not None and (min_tokens is not None or max_tokens is not None):
            n = count_tokens(full_text(row, fmt))
            if min_tokens is not None and n < min_tokens:
                reasons["too_short"] += 1
                continue
            if max_tokens is not None and n > max_tokens:
                reasons["too_long"] += 1
                continue
        kept.append(row)
    return kept, {"dropped": dict(sorted(reasons.items()))}


def dedup(rows: list[Row]) -> tuple[list[Row], dict]:
    seen: set[str] = set()
    kept = []
    for row in rows:
        digest = content_hash(row)
        if digest not in seen:
            seen.add(digest)
            kept.append(row)
    return kept, {"duplicates": len(rows) - len(kept)}


_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def shingles(text: str, size: int) -> set[str]:
    tokens = words(text)
    if len(tokens) < size:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(tokens[i : i + size]) for i in range(len(tokens) - size + 1)}


def near_dedup(rows: list[Row], fmt: str, cfg: dict[str, Any]) -> tuple[list[Row], dict]:
    """MinHash LSH (datasketch): keep the first of every group of near-duplicates."""
    from datasketch import MinHash, MinHashLSH

    threshold, num_perm = float(cfg.get("threshold", 0.8)), int(cfg.get("num_perm", 128))
    size = int(cfg.get("shingle_size", 3))
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept: list[Row] = []
    signatures: dict[str, MinHash] = {}
    examples = []
    for index, row in enumerate(rows):
        grams = shingles(full_text(row, fmt), size)
        signature = MinHash(num_perm=num_perm, seed=1)
        signature.update_batch([g.encode("utf-8") for g in grams])
        match = next(
            (
                key
                for key in lsh.query(signature)
                if signatures[key].jaccard(signature) >= threshold
            ),
            None,
        )
        if match is not None:
            if len(examples) < 5:
                examples.append({"removed": row.get("_source", str(index)), "kept": match})
            continue
        key = row.get("_source") or f"row-{index}"
        if key in signatures:
            key = f"{key}#{index}"
        lsh.insert(key, signature)
        signatures[key] = signature
        kept.append(row)
    return kept, {"near_duplicates": len(rows) - len(kept), "examples": examples}


# Recall and precision on tests/fixtures/pii/corpus.jsonl: benchmarks/pii_redaction.py.
PII_PATTERNS: dict[str, re.Pattern[str]] = {
    # Unicode local parts and domains (\w), apostrophes (o'brien@); the TLD is letters.
    "email": re.compile(r"(?<![\w.%+'-])[\w.%+'-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}\b"),
    "api_key": re.compile(
        r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}|hf_[A-Za-z0-9]{30,}|gh[pousr]_[A-Za-z0-9]{36,}"
        r"|github_pat_[A-Za-z0-9_]{40,}|(?:AKIA|ASIA)[0-9A-Z]{16}|xox[abposr]-[A-Za-z0-9-]{10,}"
        r"|AIza[0-9A-Za-z_-]{35}"
        r"|eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})"  # JSON web tokens
        r"(?![\w-])"
    ),
    # IPv4, or an IPv6 candidate (two or more colons) that ipaddress must accept.
    "ip": re.compile(
        r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b"
        r"|(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"
    ),
    # An optional +country code, an optional (area) code, then two to five groups of digits
    # split by spaces, dots or dashes; 7 to 15 digits in all (E.164), not a date, a decimal
    # number, or a one-digit group without a country code (ISBN 978-3-16-148410-0).
    "phone": re.compile(
        r"(?<![\w.+-])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{1,5}(?:[\s.-]\d{1,8}){1,4}"
        r"(?![\w:]|[.-]\d)"
    ),
}
_DECIMAL = re.compile(r"\d+\.\d+")
_DATE = re.compile(
    r"(?<!\d)(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[./]\d{1,2}[./]\d{2,4}|\d{1,2}-\d{1,2}-\d{4})"
    r"(?!\d)"
)


def _is_ip(text: str) -> bool:
    if ":" not in text:
        return True
    if not any(ch.isdigit() for ch in text):  # 'a::b' in code is valid IPv6, but code
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _is_phone(text: str) -> bool:
    digits = sum(ch.isdigit() for ch in text)
    if not 7 <= digits <= 15 or _DATE.search(text) or _DECIMAL.fullmatch(text):
        return False
    groups = re.split(r"[\s.()-]+", text.strip("+() "))
    return text.startswith(("+", "(")) or all(len(g) > 1 for g in groups if g)


PII_CHECKS: dict[str, Callable[[str], bool]] = {"ip": _is_ip, "phone": _is_phone}
PLACEHOLDERS = {"email": "[EMAIL]", "phone": "[PHONE]", "ip": "[IP]", "api_key": "[API_KEY]"}


def redact_text(
    text: str,
    kinds: Sequence[str],
    counts: Counter[str],
    allow: Sequence[re.Pattern[str]] = (),
    found: list[tuple[str, str]] | None = None,
) -> str:
    """`text` with each PII match replaced by its placeholder; `found` collects (kind, match)."""

    # API keys and emails first: a key or address can contain digit runs that look like phones.
    def replace(kind: str) -> Callable[[re.Match[str]], str]:
        check = PII_CHECKS.get(kind)

        def sub(match: re.Match[str]) -> str:
            if check is not None and not check(match.group(0)):
                return match.group(0)
            if any(pattern.search(match.group(0)) for pattern in allow):
                return match.group(0)
            counts[kind] += 1
            if found is not None:
                found.append((kind, match.group(0)))
            return PLACEHOLDERS[kind]

        return sub

    for kind in ("api_key", "email", "ip", "phone"):
        if kind in kinds:
            text = PII_PATTERNS[kind].sub(replace(kind), text)
    return text


def redact_pii(rows: list[Row], fmt: str, cfg: dict[str, Any]) -> tuple[list[Row], dict]:
    kinds = cfg.get("kinds") or list(PII_PATTERNS)
    allow = [re.compile(p) for p in cfg.get("allow") or []]
    counts: Counter[str] = Counter()
    out = [map_texts(r, fmt, lambda t: redact_text(t, kinds, counts, allow)) for r in rows]
    changed = sum(1 for a, b in zip(rows, out, strict=True) if a != b)
    return out, {"redactions": {k: counts.get(k, 0) for k in kinds}, "rows_changed": changed}


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    tokens = words(text)
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def decontaminate(
    rows: list[Row], fmt: str, cfg: dict[str, Any], eval_texts: Sequence[str]
) -> tuple[list[Row], dict]:
    """Drop rows sharing any word n-gram with an evaluation text (report what overlapped)."""
    n = int(cfg.get("ngram", 8))
    reference: set[tuple[str, ...]] = set()
    for text in eval_texts:
        reference |= ngrams(text, n)
    kept, examples = [], []
    for row in rows:
        overlap = ngrams(full_text(row, fmt), n) & reference
        if overlap:
            if len(examples) < 5:
                examples.append(
                    {"row": row.get("_source", ""), "ngram": " ".join(sorted(overlap)[0])}
                )
            continue
        kept.append(row)
    return kept, {
        "eval_overlap": len(rows) - len(kept),
        "eval_texts": len(eval_texts),
        "examples": examples,
    }
