"""Loading, YAML layer: ruamel round-trip parsing of multi-document files with positions."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.composer import Composer
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

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


@dataclass(frozen=True)
class YamlLimits:
    """What one spec file may cost to read; checked before any Python object is built.

    Specs come from pull requests, forks included, so a file is untrusted input: a YAML alias
    bomb (a few hundred bytes whose aliases expand to billions of nodes) or a huge file must
    fail fast with a located diagnostic instead of exhausting time and memory.
    """

    max_file_bytes: int = 1024 * 1024
    max_documents: int = 1000
    max_depth: int = 64
    max_scalar_chars: int = 256 * 1024
    # What aliases may add to a document: each use counts the nodes and characters of what
    # it references (its own aliases included), so the sum bounds the expanded document.
    max_alias_nodes: int = 100_000
    max_alias_chars: int = 4 * 1024 * 1024


LIMITS = YamlLimits()
_DOCUMENT_MARKER = re.compile(r"^---(?=[ \t\r\n]|$)", re.MULTILINE)


class YamlLimitError(MarkedYAMLError):
    """A spec file exceeds a YamlLimits bound; carries the hint that says what to do."""

    def __init__(self, problem: str, mark: Any, hint: str) -> None:
        super().__init__(problem=problem, problem_mark=mark)
        self.hint = hint


class _BoundedComposer(Composer):
    """ruamel's composer, counting what each node would expand to before it is constructed.

    An alias returns the node it references (shared, so composing a bomb is cheap); its
    weight, (nodes, characters) of the expanded subtree, is memoised per node, so counting is
    linear in the file while the budget applies to the expansion.
    """

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self.warn_double_anchors = False  # legal YAML (the later anchor wins); no stderr noise
        self.limits: YamlLimits = getattr(loader, "llmops_limits", LIMITS)
        self._weights: dict[int, tuple[int, int]] = {}
        self._alias_nodes = 0
        self._alias_chars = 0
        self._documents = 0

    def compose_document(self: Any) -> Any:
        self._documents += 1
        if self._documents > self.limits.max_documents:
            mark = self.parser.peek_event().start_mark
            raise YamlLimitError(
                f"more than {self.limits.max_documents} YAML documents in one file",
                mark,
                "split the documents over several files under specs/",
            )
        self._weights = {}
        self._alias_nodes = self._alias_chars = 0
        return super().compose_document()

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        if isinstance(event, AliasEvent):
            node = super().compose_node(parent, index)
            weight = self._weights.get(id(node))
            if weight is None:
                raise YamlLimitError(
                    f"alias *{event.anchor} refers to a node that contains it (a cycle)",
                    event.start_mark,
                    "specs are trees: write the value out instead of a recursive alias",
                )
            self._alias_nodes += weight[0]
            self._alias_chars += weight[1]
            if (
                self._alias_nodes > self.limits.max_alias_nodes
                or self._alias_chars > self.limits.max_alias_chars
            ):
                raise YamlLimitError(
                    f"YAML aliases expand this document beyond {self.limits.max_alias_nodes:,}"
                    f" nodes or {self.limits.max_alias_chars:,} characters"
                    f" (alias *{event.anchor}: {self._alias_nodes:,} nodes so far)",
                    event.start_mark,
                    "this looks like an alias bomb; write the values out or use fewer aliases",
                )
            return node
        node = super().compose_node(parent, index)
        self._weights[id(node)] = self._weight(node)
        return node

    def _weight(self, node: Any) -> tuple[int, int]:
        if isinstance(node, ScalarNode):
            size = len(node.value) if isinstance(node.value, str) else 0
            if size > self.limits.max_scalar_chars:
                raise YamlLimitError(
                    f"a scalar of {size:,} characters (at most {self.limits.max_scalar_chars:,})",
                    node.start_mark,
                    "keep large text in a data file and reference its path from the spec",
                )
            return 1, size
        nodes, chars = 1, 0
        if isinstance(node, SequenceNode):
            children: list[Any] = list(node.value)
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        for child in children:
            n, c = self._weights.get(id(child), (1, 0))
            nodes += n
            chars += c
        return nodes, chars


def _yaml(limits: YamlLimits = LIMITS) -> YAML:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    yaml.Composer = _BoundedComposer
    yaml.max_depth = limits.max_depth
    yaml.llmops_limits = limits  # type: ignore[attr-defined]
    return yaml


def flow_depth_position(text: str, max_depth: int) -> tuple[int, int] | None:
    """1-based (line, col) where flow brackets nest deeper than `max_depth`, else None.

    ruamel's scanner is quadratic in flow nesting ('[[[[...' of 5,000 takes seconds before
    the composer sees a node), so flow depth is counted in one pass over the text first.
    Quoted strings and comments are skipped; it is a bound, not a parser, so brackets in
    plain scalars count too (a real spec never leaves 64 of them open).
    """
    depth, line, col, quote, prev = 0, 1, 0, "", "\n"
    chars = iter(text)
    for ch in chars:
        col += 1
        if ch == "\n":
            line, col = line + 1, 0
            prev = ch
            continue
        if quote:
            if quote == '"' and ch == "\\":
                next(chars, "")
                col += 1
            elif ch == quote:
                quote = ""
        elif ch == "#" and prev in " \t\n":
            for skipped in chars:  # a comment runs to the end of the line
                if skipped == "\n":
                    line, col, ch = line + 1, 0, "\n"
                    break
        elif ch in "'\"" and prev in " \t\n[{,:-":
            quote = ch
        elif ch in "[{":
            depth += 1
            if depth > max_depth:
                return line, col
        elif ch in "]}":
            depth = max(depth - 1, 0)
        prev = ch
    return None


def size_diagnostic(size: int, file: str, limits: YamlLimits = LIMITS) -> Diagnostic | None:
    """A diagnostic for a spec file over the size limit (checked before reading it)."""
    if size <= limits.max_file_bytes:
        return None
    return Diagnostic(
        file,
        1,
        1,
        "",
        f"spec file is {size:,} bytes (at most {limits.max_file_bytes:,})",
        "specs are small YAML files; keep data in data files and reference them by path",
    )


def parse_documents(
    text: str, file: str, limits: YamlLimits = LIMITS
) -> tuple[list[YamlDocument], list[Diagnostic]]:
    """Parse every document of a YAML file; syntax errors become diagnostics, never exceptions.

    The file's size, documents, nesting depth, scalars and alias expansion are bounded by
    `limits` while composing, before any object is built (see YamlLimits).
    """
    documents: list[YamlDocument] = []
    size = len(text) if len(text) > limits.max_file_bytes else len(text.encode("utf-8", "replace"))
    too_big = size_diagnostic(size, file, limits)
    if too_big:
        return documents, [too_big]
    markers = _DOCUMENT_MARKER.finditer(text)
    for count, marker in enumerate(markers, start=1):  # counted before parsing: cheap
        if count > limits.max_documents:
            line = text.count("\n", 0, marker.start()) + 1
            problem = f"more than {limits.max_documents} YAML documents in one file"
            hint = "split the documents over several files under specs/"
            return documents, [Diagnostic(file, line, 1, "", problem, hint)]
    deep = flow_depth_position(text, limits.max_depth)
    if deep:
        problem = f"nesting deeper than {limits.max_depth} levels"
        hint = "flatten the structure; no spec field nests this deep"
        return documents, [Diagnostic(file, deep[0], deep[1], "", problem, hint)]
    try:
        for index, tree in enumerate(_yaml(limits).load_all(text)):
            if tree is None:
                continue
            line, col = _start(tree)
            documents.append(YamlDocument(file, index, to_plain(tree), line, col, text, tree))
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = (err.problem or err.context or "invalid YAML").strip()
        hint = "fix the YAML syntax here; specs are YAML 1.2"
        if isinstance(err, YamlLimitError):
            documents, hint = [], err.hint  # the file is refused whole, not half-validated
        elif "maximum depth" in problem:
            documents, problem = [], f"nesting deeper than {limits.max_depth} levels"
            hint = "flatten the structure; no spec field nests this deep"
        elif "duplicate key" in problem or "found duplicate key" in str(err):
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
