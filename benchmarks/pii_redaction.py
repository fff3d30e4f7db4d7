"""Recall and precision of dataset preparation's PII redaction on a labelled corpus.

The corpus (tests/fixtures/pii/corpus.jsonl) holds sentences with their PII labelled by kind
and value (emails, phone numbers in many national formats, IPv4 and IPv6 addresses, API keys
and tokens, personal names) and sentences with none but look-alikes (versions, dates, prices,
order and tracking numbers, coordinates). A labelled value is caught when one redaction of
its kind covers it; a redaction is correct when it lies within (or covers) a labelled value
of its kind. Names are not a kind the redactor has; their recall is printed for the record.

    python benchmarks/pii_redaction.py
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from runners.data.steps import PII_PATTERNS, redact_text

CORPUS = Path(__file__).resolve().parents[1] / "tests/fixtures/pii/corpus.jsonl"
STRUCTURED = ("email", "phone", "ip", "api_key")


def measure(corpus: Path = CORPUS) -> dict[str, dict[str, float]]:
    """Per kind: labelled, caught, redactions, correct, recall, precision."""
    stats: dict[str, Counter[str]] = {k: Counter() for k in (*STRUCTURED, "name")}
    misses: list[str] = []
    for line in corpus.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        found: list[tuple[str, str]] = []
        redacted = redact_text(row["text"], list(PII_PATTERNS), Counter(), found=found)
        labels = row["pii"]
        for label in labels:
            kind, value = label["kind"], label["value"]
            stats[kind]["labelled"] += 1
            if any(k == kind and value in match for k, match in found):
                stats[kind]["caught"] += 1
            else:
                misses.append(f"missed {kind} {value!r}: {redacted}")
        for kind, match in found:
            stats[kind]["redactions"] += 1
            if any(
                lab["kind"] == kind and (match in lab["value"] or lab["value"] in match)
                for lab in labels
            ):
                stats[kind]["correct"] += 1
            else:
                misses.append(f"wrong {kind} {match!r}: {row['text']}")
    out: dict[str, dict[str, float]] = {}
    for kind, c in stats.items():
        out[kind] = {
            **{k: float(c[k]) for k in ("labelled", "caught", "redactions", "correct")},
            "recall": c["caught"] / c["labelled"] if c["labelled"] else 1.0,
            "precision": c["correct"] / c["redactions"] if c["redactions"] else 1.0,
        }
    out["_misses"] = {m: 0.0 for m in misses}
    return out


def structured_totals(figures: dict[str, dict[str, float]]) -> tuple[float, float]:
    caught = sum(figures[k]["caught"] for k in STRUCTURED)
    labelled = sum(figures[k]["labelled"] for k in STRUCTURED)
    correct = sum(figures[k]["correct"] for k in STRUCTURED)
    redactions = sum(figures[k]["redactions"] for k in STRUCTURED)
    return caught / labelled, correct / max(redactions, 1)


def main() -> int:
    figures = measure()
    for miss in figures.pop("_misses"):
        print(f"  {miss}")
    header = f"{'kind':<8} {'labelled':>8} {'caught':>6} {'recall':>6}"
    print(f"{header} {'redacted':>8} {'precision':>9}")
    for kind, f in figures.items():
        print(
            f"{kind:<8} {f['labelled']:>8.0f} {f['caught']:>6.0f} {f['recall']:>6.2f}"
            f" {f['redactions']:>8.0f} {f['precision']:>9.2f}"
        )
    recall, precision = structured_totals(figures)
    print(f"PII redaction, structured kinds: recall {recall:.3f}, precision {precision:.3f}")
    return 0 if recall >= 0.95 else 1


if __name__ == "__main__":
    raise SystemExit(main())
