"""Runner `evaluate`, prompt text: `{field}` placeholders filled from a row, nothing else.

Suite prompts and data rows come from pull requests, so they are never handed to a template
engine (lm-eval's Jinja runs Python) or to str.format (whose `{x.__class__}` walks objects).
The grammar is str.format's, cut down: `{name}` (an identifier) is the row's field, `{{` and
`}}` are literal braces, and every other brace is an error, so what a prompt means is always
plain to see. `llmops validate` reports the same problems with the spec's file and line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runners.errors import LlmopsError

# An identifier as Python spells one (letters of any script, digits after the first).
FIELD_NAME = re.compile(r"[^\W\d]\w*")
_TOKEN = re.compile(r"\{\{|\}\}|\{|\}|[^{}]+")
_NAME_AFTER = re.compile(r"\s*([^\W\d]\w*)")
BRACE_HINT = "write {field} for a row's field and {{ or }} for a literal brace"


class PlaceholderError(LlmopsError):
    """A prompt template that is not plain text with `{field}` placeholders."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a template: what, where (0-based offset) and how to write it."""

    message: str
    offset: int
    hint: str = BRACE_HINT


@dataclass(frozen=True)
class Field:
    name: str


Part = str | Field


def _after_brace(text: str, start: int) -> Problem:
    """Why the '{' at `start` opens no placeholder."""
    rest = text[start + 1 :]
    if rest[:1] in ("%", "#"):
        kind = "statement" if rest[0] == "%" else "comment"
        return Problem(
            f"'{{{rest[0]}' at character {start + 1} is a template {kind}; suites are not "
            "templates, only {field} placeholders are filled",
            start,
        )
    name = FIELD_NAME.match(rest)
    if name:
        after = rest[name.end() : name.end() + 1]
        if after in (".", "["):
            return Problem(
                f"'{{{name.group()}{after}...' at character {start + 1}: attribute and index "
                "access are not allowed in a placeholder",
                start,
                "name a top-level field of the row, e.g. {question}",
            )
        if after in ("!", ":"):
            return Problem(
                f"'{{{name.group()}{after}...' at character {start + 1}: conversions and format "
                "specs are not supported",
                start,
                "write the bare field, e.g. {question}",
            )
    return Problem(f"'{{' at character {start + 1} opens no {{field}} placeholder", start)


def parse(template: str) -> tuple[list[Part], list[Problem]]:
    """Literal text and fields, in order; problems instead where the text is not well formed."""
    parts: list[Part] = []
    problems: list[Problem] = []
    literal: list[str] = []
    position = 0
    while position < len(template):
        match = _TOKEN.match(template, position)
        assert match  # the alternatives cover every character
        token = match.group()
        if token == "{{":
            literal.append("{")
        elif token == "}}":
            literal.append("}")
        elif token == "}":
            problems.append(
                Problem(f"single '}}' at character {position + 1} closes no placeholder", position)
            )
        elif token == "{":
            name = FIELD_NAME.match(template, position + 1)
            if name and template.startswith("}", name.end()):
                if literal:
                    parts.append("".join(literal))
                    literal = []
                parts.append(Field(name.group()))
                position = name.end() + 1
                continue
            problems.append(_after_brace(template, position))
            # One problem per bad placeholder: its closing brace is not a second one.
            close = template.find("}", position + 1)
            if close != -1 and "{" not in template[position + 1 : close]:
                position = close + 1
                continue
        else:
            literal.append(token)
        position = match.end()
    if literal:
        parts.append("".join(literal))
    return parts, problems


def lint(template: str) -> list[Problem]:
    """Well formed, but a leftover template expression: `{{question}}` and `{{ q.x }}` were
    lm-eval's Jinja and would now print as literal text, so `llmops validate` refuses them."""
    found: list[Problem] = []
    position = 0
    while position < len(template):
        match = _TOKEN.match(template, position)
        assert match
        if match.group() == "{{":
            name = _NAME_AFTER.match(template, match.end())
            if name:
                found.append(
                    Problem(
                        f"'{{{{{name.group()}...' at character {position + 1} is a template "
                        "expression; suites are not templates, only {field} placeholders are "
                        "filled",
                        position,
                        f"write {{{name.group(1)}}} to insert the row's field "
                        f"'{name.group(1)}'; {{{{ and }}}} are literal braces, and a literal "
                        "brace may not come just before a name",
                    )
                )
        elif match.group() == "{":
            name = FIELD_NAME.match(template, position + 1)
            if name and template.startswith("}", name.end()):
                position = name.end() + 1
                continue
        position = match.end()
    return found


def problems(template: str) -> list[Problem]:
    """Everything `llmops validate` refuses in a prompt template."""
    return parse(template)[1] + lint(template)


@dataclass(frozen=True)
class Template:
    """A parsed prompt template; calling it with a row gives the prompt text."""

    text: str
    parts: tuple[Part, ...]

    @classmethod
    def of(cls, text: str, what: str = "prompt") -> Template:
        parts, problems = parse(text)
        if problems:
            first = problems[0]
            raise PlaceholderError(f"{what} {text[:80]!r}: {first.message}; {first.hint}")
        return cls(text, tuple(parts))

    @property
    def fields(self) -> list[str]:
        return [p.name for p in self.parts if isinstance(p, Field)]

    def __call__(self, row: Mapping[str, Any]) -> str:
        out = []
        for part in self.parts:
            if isinstance(part, Field):
                if part.name not in row:
                    raise PlaceholderError(
                        f"the row has no field '{part.name}' (fields: {', '.join(map(str, row))})"
                    )
                out.append(as_text(row[part.name]))
            else:
                out.append(part)
        return "".join(out)


def as_text(value: Any) -> str:
    """A row value as prompt text: str(), as lm-eval's templates printed it before."""
    return str(value)


def fill(template: str, row: Mapping[str, Any], what: str = "prompt") -> str:
    """`template` with each `{field}` replaced by the row's value; everything else literal."""
    return Template.of(template, what)(row)


def field_name_problem(value: str) -> str | None:
    """Why `value` is not a row field name (target, choices), or None when it is one."""
    if FIELD_NAME.fullmatch(value):
        return None
    return f"'{value[:60]}' is not a field name (letters, digits and '_'; no digit first)"
