"""Fuzz the spec loader: N generated and mutated documents, 0 tracebacks, every error located.

Documents come from hypothesis (seeded, no example database), three ways in turn: the
demo's specs with their text cut and spliced with junk and YAML tokens (anchors, aliases,
merge keys, tags, flow brackets, document markers), their parsed structure mutated (values
replaced, keys deleted, renamed or added; tests/unit/load/test_fuzz.py's strategies), and
the mutated structure given hostile YAML around it. Each document is loaded and validated
(`load_text`). A document is valid, invalid with every diagnostic located (the file, a
line within the text, a column, a message), invalid with an unlocated diagnostic, or a
traceback (any exception). Exits 1 unless tracebacks and unlocated are 0. The unit tests
run a few hundred of the same documents on every `make test`.

    python benchmarks/fuzz_specs.py --count 10000 [--seed 19]
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from controller.load.loader import load_text
from tests.unit.load.test_fuzz import SEEDS, dump, mutated_documents

FILE = "specs/fuzz.yaml"
TOKENS = st.sampled_from(
    [
        "&a ", "*a", "*b", "<<: *a\n", "[", "]", "{", "}", "---\n", "...\n",
        "!!python/object:os.system ", "!!binary ", "%YAML 1.1\n", "? ", ": ", "- ", "|\n",
        ">-\n", "\t", "'", '"', "#", "\\", "\x00",
        "\ufeff", "\u2028", "~", "null", "1e309", "0x1F", "2026-13-40", "@", "`",
    ]
)  # fmt: skip


@st.composite
def spliced_text(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 20))
        junk = draw(st.one_of(TOKENS, st.text(max_size=8)))
        text = text[:at] + junk + text[at + cut :]
    return text


@st.composite
def hostile_structure(draw: st.DrawFn) -> str:
    text = dump(draw(mutated_documents()))
    lines = text.splitlines(keepends=True)
    at = draw(st.integers(0, len(lines)))
    prefix = draw(st.sampled_from(["", "x: &a {k: [1, 2]}\n", "x: &a [1]\ny: &b [*a, *a]\n"]))
    suffix = draw(st.sampled_from(["", "z: *a\n", "z: {<<: *a}\n", "---\n", "--- *a\n"]))
    return prefix + "".join(lines[:at]) + draw(TOKENS) + "".join(lines[at:]) + suffix


DOCUMENTS = st.one_of(spliced_text(), mutated_documents().map(dump), hostile_structure())


def classify(text: str, counts: Counter[str], examples: list[str]) -> None:
    try:
        result = load_text(text, FILE)
    except Exception:
        counts["tracebacks"] += 1
        if len(examples) < 3:
            examples.append(f"{traceback.format_exc()}\n--- document ---\n{text[:2000]}")
        return
    errors = [d for d in result.diagnostics if d.severity == "error"]
    if not errors:
        counts["valid"] += 1
        return
    last_line = text.count("\n") + 2
    located = all(
        d.file == FILE and 1 <= d.line <= last_line and d.col >= 1 and d.message.strip()
        for d in result.diagnostics
    )
    counts["invalid, located" if located else "invalid, unlocated"] += 1
    if not located and len(examples) < 3:
        shown = "\n".join(d.render() for d in result.diagnostics)
        examples.append(f"unlocated:\n{shown}\n--- document ---\n{text[:2000]}")


def fuzz(count: int, seed_value: int) -> tuple[Counter[str], list[str]]:
    counts: Counter[str] = Counter()
    examples: list[str] = []

    @seed(seed_value)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(DOCUMENTS)
    def one(text: Any) -> None:
        counts["documents"] += 1
        classify(text, counts, examples)

    one()
    return counts, examples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args()
    start = time.perf_counter()
    counts, examples = fuzz(args.count, args.seed)
    seconds = time.perf_counter() - start
    for example in examples:
        print(example, file=sys.stderr)
    print(
        f"fuzz specs (seed {args.seed}): {counts['documents']:,} documents in {seconds:.0f} s;"
        f" valid {counts['valid']:,}; invalid with located diagnostics"
        f" {counts['invalid, located']:,}; invalid unlocated {counts['invalid, unlocated']:,};"
        f" tracebacks {counts['tracebacks']:,}"
    )
    return 1 if counts["tracebacks"] or counts["invalid, unlocated"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
