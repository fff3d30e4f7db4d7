"""Loading, YAML layer: ruamel round-trip parsing of multi-document files with positions."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from controller.load.diagnostics import Diagnostic

Loc = tuple[str | int, ...]


@dataclass
class YamlDocument:
    """One YAML document of a file: its plain data, where it starts, and its positions.

    `data` is plain JSON-like data used for validation and digests. The round-trip `tree`
    carries line and column numbers; when the document came from the parse cache it is
    parsed again from `text` only if a diagnostic needs a position.
    """

    file: str
    index: int
    data: Any
    line: int
    col: int
    text: str = field(default="", repr=False)
    _tree: Any = field(default=None, repr=False)

    @property
    def tree(self) -> Any:
        if self._tree is None:
            trees = list(_yaml().load_all(self.text))
            self._tree = trees[self.index]
        return self._tree

    def position(self, loc: Loc, *, key: bool = False) -> tuple[int, int]:
        """1-based (line, col) of the node at `loc`, or of its nearest existing ancestor.

        With key=True the position of the mapping key is returned instead of its value, which
        is where an editor should point for unknown or misspelt fields.
        """
        return node_position(self.tree, loc, key=key, default=(self.line, self.col))


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    return yaml


def parse_documents(text: str, file: str) -> tuple[list[YamlDocument], list[Diagnostic]]:
    """Parse every document of a YAML file; syntax errors become diagnostics, never exceptions."""
    documents: list[YamlDocument] = []
    try:
        for index, tree in enumerate(_yaml().load_all(text)):
            if tree is None:
                continue
            line, col = _start(tree)
            documents.append(YamlDocument(file, index, to_plain(tree), line, col, text, tree))
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = (err.problem or err.context or "invalid YAML").strip()
        hint = "fix the YAML syntax here; specs are YAML 1.2"
        if "duplicate key" in problem or "found duplicate key" in str(err):
            problem = f"duplicate key: {problem}"
            hint = "each key may appear once in a mapping; remove or rename one of them"
        return documents, [Diagnostic(file, line, col, "", problem, hint)]
    except (YAMLError, ValueError, TypeError, RecursionError, UnicodeError) as err:
        return documents, [Diagnostic(file, 1, 1, "", f"cannot read YAML: {err}", "")]
    return documents, []


def _start(tree: Any) -> tuple[int, int]:
    lc = getattr(tree, "lc", None)
    if lc is not None and lc.line is not None:
        return lc.line + 1, lc.col + 1
    return 1, 1


def node_position(
    tree: Any, loc: Loc, *, key: bool = False, default: tuple[int, int] = (1, 1)
) -> tuple[int, int]:
    """Walk `loc` through a round-trip tree and return the best 1-based position."""
    best = _start(tree) if hasattr(tree, "lc") else default
    node = tree
    for depth, part in enumerate(loc):
        last = depth == len(loc) - 1
        if isinstance(node, CommentedMap) and isinstance(part, str) and part in node:
            try:
                line, col = node.lc.key(part) if (key and last) else node.lc.value(part)
            except (KeyError, TypeError, AttributeError):
                return best
            best = (line + 1, col + 1)
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            try:
                line, col = node.lc.item(part)
            except (KeyError, TypeError, AttributeError):
                return best
            best = (line + 1, col + 1)
            node = node[part]
        else:
            return best
    return best


def to_plain(node: Any) -> Any:
    """Round-trip nodes -> plain dict/list/str/int/float/bool/None for validation and digests."""
    if isinstance(node, dict):
        return {str(k): to_plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [to_plain(v) for v in node]
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, dt.datetime | dt.date):
        return node.isoformat()
    if node is None:
        return None
    if hasattr(node, "value"):  # tagged scalars keep their text
        return str(node.value)
    return str(node)


def walk_strings(tree: Any, loc: Loc = ()) -> list[tuple[Loc, str]]:
    """Every string scalar (keys excluded) with its location."""
    found: list[tuple[Loc, str]] = []
    stack: list[tuple[Loc, Any]] = [(loc, tree)]
    while stack:
        here, node = stack.pop()
        if isinstance(node, dict):
            stack.extend(((*here, str(k)), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend(((*here, i), v) for i, v in enumerate(node))
        elif isinstance(node, str):
            found.append((here, str(node)))
    return found
