"""Structure counts of controller/ and runners/ at a baseline git revision against the working tree.

The foundation issue (typed specs, one deploy Target, apply hooks, an import rule) is measured
by what the code no longer does: reading specs through dict lookups, parsing addresses back
from strings, comparing kinds as strings, importing inside functions, writing functions over
80 lines. Each count is printed for the baseline (`--base`, default the first commit of this
round) and for the working tree, with the ratio.

    python benchmarks/structure_counts.py --base 42494c8
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = "Model|Dataset|EvalSuite|Experiment|Evaluation|Arena|Deployment|Pipeline"
SPEC_LOOKUP = re.compile(r"""\bspec\s*\[\s*["']|\bspec\.get\(""")
ADDRESS_PARSE = re.compile(r"\bAddress\.parse\(")
KIND_STRING = re.compile(
    rf"""\bkind\s*(?:==|!=)\s*["'](?:{KINDS})["']|["'](?:{KINDS})["']\s*(?:==|!=)\s*\w*kind\b"""
    rf"""|\bkind\s+(?:not\s+)?in\s*[(\[{{]\s*["'](?:{KINDS})["']"""
)
LONG_FUNCTION = 80


def _files(base: str | None, folder: str) -> Iterable[tuple[str, str]]:
    """(path, text) of every .py file under `folder` at `base`, or in the working tree."""
    if base is None:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield str(path.relative_to(ROOT)), path.read_text()
        return
    names = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", base, folder],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for name in names:
        if name.endswith(".py"):
            text = subprocess.run(
                ["git", "show", f"{base}:{name}"], cwd=ROOT, check=True, capture_output=True
            ).stdout.decode()
            yield name, text


def _regex(pattern: re.Pattern[str]) -> Callable[[str], int]:
    return lambda text: len(pattern.findall(text))


def _function_imports(text: str) -> int:
    count = 0
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            count += sum(
                isinstance(inner, ast.Import | ast.ImportFrom)
                for stmt in node.body
                for inner in ast.walk(stmt)
            )
    return count


def _long_functions(text: str) -> int:
    return sum(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (node.end_lineno or node.lineno) - node.lineno + 1 > LONG_FUNCTION
        for node in ast.walk(ast.parse(text))
    )


COUNTS: dict[str, tuple[str, Callable[[str], int]]] = {
    "spec dict lookups in controller/": ("controller", _regex(SPEC_LOOKUP)),
    "Address.parse( calls": ("controller", _regex(ADDRESS_PARSE)),
    "string kind comparisons": ("controller", _regex(KIND_STRING)),
    "function-level imports (controller/)": ("controller", _function_imports),
    "function-level imports (runners/)": ("runners", _function_imports),
    f"functions over {LONG_FUNCTION} lines (controller/, runners/)": ("both", _long_functions),
}


def count(base: str | None) -> dict[str, int]:
    texts = {folder: list(_files(base, folder)) for folder in ("controller", "runners")}
    out = {}
    for label, (folder, measure) in COUNTS.items():
        chosen = texts["controller"] + texts["runners"] if folder == "both" else texts[folder]
        out[label] = sum(measure(text) for _, text in chosen)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="42494c8", help="baseline git revision")
    args = parser.parse_args(argv)
    before, after = count(args.base), count(None)
    width = max(map(len, COUNTS))
    print(f"{'count':<{width}}  {args.base:>8}  {'now':>6}  ratio")
    for label in COUNTS:
        ratio = f"{after[label] / before[label]:.2f}" if before[label] else "-"
        print(f"{label:<{width}}  {before[label]:>8}  {after[label]:>6}  {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
