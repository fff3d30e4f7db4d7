"""Loading, validation layer: one YAML document -> a spec object, or diagnostics with hints."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from pydantic import BaseModel, ValidationError

from controller.api import API_VERSION, KINDS, Resource
from controller.api.common import NAME_PATTERN, REF_PATTERN
from controller.load.diagnostics import Diagnostic, did_you_mean
from controller.load.secrets import SECRET_FIELD_NAMES, SECRET_HINT, find_secret
from controller.load.yaml_source import Loc, YamlDocument, walk_strings
from controller.plan.kinds import EXPERIMENT


def _is_secret_field(name: object) -> bool:
    return isinstance(name, str) and bool(SECRET_FIELD_NAMES.search(name))


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@cache
def kind_schema(kind: str) -> dict[str, Any]:
    return KINDS[kind].model_json_schema(by_alias=True, mode="validation")


def _deref(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while isinstance(node, dict) and "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[-1]]
    return node


def _branches(node: dict[str, Any], defs: dict[str, Any]) -> list[dict[str, Any]]:
    node = _deref(node, defs)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in node:
            out: list[dict[str, Any]] = []
            for branch in node[key]:
                out.extend(_branches(branch, defs))
            return out
    return [node]


def schema_fields(schema: dict[str, Any], loc: Loc) -> list[str]:
    """Field names the schema allows at `loc` (a pydantic loc, union tags included)."""
    defs = schema.get("$defs", {})
    nodes = [schema]
    for part in loc:
        following: list[dict[str, Any]] = []
        for node in nodes:
            for branch in _branches(node, defs):
                props = branch.get("properties", {})
                mapping = branch.get("discriminator", {}).get("mapping", {})
                if isinstance(part, str) and part in props:
                    following.append(props[part])
                elif isinstance(part, str) and part in mapping:
                    following.append({"$ref": mapping[part]})
                elif isinstance(part, int) and "items" in branch:
                    following.append(branch["items"])
                elif isinstance(part, str) and isinstance(branch.get("additionalProperties"), dict):
                    following.append(branch["additionalProperties"])
        nodes = following or nodes
        if not following:
            # A discriminator tag that the schema lists only in its oneOf branches.
            tagged = [
                b
                for n in nodes
                for b in _branches(n, defs)
                if isinstance(part, str) and _const_tag(b) == part
            ]
            nodes = tagged or nodes
    fields: list[str] = []
    for node in nodes:
        for branch in _branches(node, defs):
            fields.extend(branch.get("properties", {}))
    return sorted(set(fields))


def _const_tag(branch: dict[str, Any]) -> str | None:
    for prop in branch.get("properties", {}).values():
        if "const" in prop:
            return str(prop["const"])
    return None


def data_loc(plain: Any, loc: Loc) -> Loc:
    """Drop the parts of a pydantic loc that are not keys of the data (union tags, '[key]')."""
    out: list[str | int] = []
    node = plain
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        # A union tag can share its name with a field (UrlSource's tag 'url' and its 'url'):
        # a part that is followed by more cannot be a scalar field, so it is the tag.
        if (
            isinstance(node, dict)
            and part in node
            and (last or isinstance(node[part], dict | list))
        ) or (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            out.append(part)
            node = node[part]
        elif last:
            out.append(part)
        elif isinstance(part, str) and part.startswith("[") and part.endswith("]"):
            continue  # dict-key validation: the key itself is the next part
    return tuple(out)


_QUOTED = re.compile(r"'([^']*)'")


def _error_to_diagnostic(
    doc: YamlDocument, plain: Any, kind: str, error: dict[str, Any]
) -> Diagnostic:
    raw_loc: Loc = tuple(error["loc"])
    loc = data_loc(plain, raw_loc)
    path = format_loc(loc)
    kind_of = error["type"]
    ctx = error.get("ctx") or {}
    message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    hint = ""
    line, col = doc.position(loc)

    if kind_of == "extra_forbidden":
        field = str(loc[-1])
        allowed = schema_fields(kind_schema(kind), raw_loc[:-1])
        message = f"unknown field '{field}'"
        suggestion = did_you_mean(field, allowed)
        hint = suggestion or (f"allowed here: {', '.join(allowed)}" if allowed else "remove it")
        line, col = doc.position(loc, key=True)
    elif kind_of == "missing":
        field = str(loc[-1])
        parent = format_loc(loc[:-1]) or "the document"
        message = f"missing required field '{field}'"
        hint = f"add '{field}:' under {parent}"
        line, col = doc.position(loc[:-1], key=True)
    elif kind_of == "literal_error":
        expected = _QUOTED.findall(str(ctx.get("expected", "")))
        given = error.get("input")
        message = f"'{given}' is not allowed; expected one of: {', '.join(expected)}"
        hint = did_you_mean(str(given), expected) if isinstance(given, str) else ""
    elif kind_of == "union_tag_invalid":
        tag_field = str(ctx.get("discriminator", "type")).strip("'")
        expected = _QUOTED.findall(str(ctx.get("expected_tags", "")))
        given = str(ctx.get("tag", ""))
        message = f"unknown {tag_field} '{given}'; expected one of: {', '.join(expected)}"
        hint = did_you_mean(given, expected)
        path = format_loc((*loc, tag_field))
        line, col = doc.position((*loc, tag_field))
    elif kind_of == "union_tag_not_found":
        tag_field = str(ctx.get("discriminator", "type")).strip("'")
        message = f"missing '{tag_field}', which says what this entry is"
        options = schema_tag_values(kind, raw_loc)
        hint = f"add '{tag_field}:' with one of: {', '.join(options)}" if options else ""
    elif kind_of == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        given = error.get("input")
        if pattern == NAME_PATTERN:
            message = f"'{given}' is not a valid name"
            hint = "names are DNS-style: lowercase letters, digits and '-', at most 63 characters"
        elif pattern == REF_PATTERN:
            message = f"'{given}' is not a valid reference"
            hint = (
                "write 'name' or 'name@version' or 'name@alias', e.g. 'support-assistant@champion'"
            )
        else:
            message = f"'{given}' does not match the expected format {pattern}"
    elif kind_of in ("model_type", "dict_type") and isinstance(error.get("input"), list | str):
        message = f"expected a mapping of fields here, got {type(error['input']).__name__}"
    if not hint and kind_of not in ("missing", "extra_forbidden"):
        hint = _field_hint(kind, raw_loc)
    return Diagnostic(doc.file, line, col, path, message, hint)


def schema_tag_values(kind: str, raw_loc: Loc) -> list[str]:
    schema = kind_schema(kind)
    defs = schema.get("$defs", {})
    nodes = [schema]
    for part in raw_loc:
        nxt: list[dict[str, Any]] = []
        for n in nodes:
            for b in _branches(n, defs):
                if isinstance(part, str) and part in b.get("properties", {}):
                    nxt.append(b["properties"][part])
                elif isinstance(part, int) and "items" in b:
                    nxt.append(b["items"])
        nodes = nxt
    tags: list[str] = []
    for n in nodes:
        for b in _branches(n, defs):
            tag = _const_tag(b)
            if tag:
                tags.append(tag)
    return sorted(set(tags))


def _field_hint(kind: str, raw_loc: Loc) -> str:
    """The field's own description from the schema, as guidance on what to write."""
    if not raw_loc:
        return ""
    schema = kind_schema(kind)
    defs = schema.get("$defs", {})
    nodes = [schema]
    for part in raw_loc:
        nxt: list[dict[str, Any]] = []
        for n in nodes:
            for b in _branches(n, defs):
                if isinstance(part, str) and _const_tag(b) == part:
                    nxt = [b]  # a union tag (which may also be a field's name) picks its branch
                    break
                if isinstance(part, str) and part in b.get("properties", {}):
                    nxt.append(b["properties"][part])
                elif isinstance(part, int) and "items" in b:
                    nxt.append(b["items"])
            else:
                continue
            break
        nodes = nxt or nodes
    for n in nodes:
        desc = n.get("description") or _deref(n, defs).get("description")
        if desc:
            return str(desc).splitlines()[0]
    return ""


def _without_interpolations(node: Any) -> Any:
    """Drop OmegaConf interpolations ('${training.epochs}'): they are checked after composition."""
    if isinstance(node, dict):
        return {
            k: _without_interpolations(v)
            for k, v in node.items()
            if not (isinstance(v, str) and "${" in v)
        }
    if isinstance(node, list):
        return [_without_interpolations(v) for v in node]
    return node


def validate_document(doc: YamlDocument) -> tuple[Resource | None, list[Diagnostic]]:
    """Check envelope, secrets and the kind's model; return the object or diagnostics."""
    plain = doc.data
    if not isinstance(plain, dict):
        return None, [
            Diagnostic(
                doc.file,
                doc.line,
                doc.col,
                "",
                "a spec document must be a mapping",
                "start with 'apiVersion: llmops/v1', 'kind:', 'metadata:' and 'spec:'",
            )
        ]
    diagnostics: list[Diagnostic] = []
    for loc, value in walk_strings(plain):
        # A reference ({env: NAME} or {secret: name/key}) under a secret-named field is the
        # right way to write it: only its own fields' names are not secret values.
        field = loc[-1] if loc else None
        if len(loc) >= 2 and field in ("env", "secret") and _is_secret_field(loc[-2]):
            field = None
        label = find_secret(value, field)
        if label:
            line, col = doc.position(loc)
            diagnostics.append(
                Diagnostic(
                    doc.file,
                    line,
                    col,
                    format_loc(loc),
                    f"{label} written inline",
                    SECRET_HINT,
                )
            )

    api_version = plain.get("apiVersion")
    if api_version != API_VERSION:
        line, col = doc.position(("apiVersion",))
        if api_version is None:
            message = "missing 'apiVersion'"
            line, col = doc.line, doc.col
        else:
            message = f"unknown apiVersion '{api_version}'"
        diagnostics.append(
            Diagnostic(
                doc.file, line, col, "apiVersion", message, f"use 'apiVersion: {API_VERSION}'"
            )
        )
        return None, diagnostics

    kind = plain.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        line, col = doc.position(("kind",))
        if kind is None:
            message, hint = "missing 'kind'", f"add 'kind:' with one of: {', '.join(KINDS)}"
            line, col = doc.line, doc.col
        else:
            message = f"unknown kind '{kind}'"
            hint = did_you_mean(str(kind), KINDS) or f"expected one of: {', '.join(KINDS)}"
        diagnostics.append(Diagnostic(doc.file, line, col, "kind", message, hint))
        return None, diagnostics

    model_cls: type[BaseModel] = KINDS[kind]
    try:
        resource = model_cls.model_validate(
            _without_interpolations(plain) if kind == EXPERIMENT else plain
        )
    except ValidationError as err:
        diagnostics.extend(
            _error_to_diagnostic(doc, plain, kind, e) for e in err.errors(include_url=False)
        )
        return None, diagnostics
    if diagnostics:
        return None, diagnostics
    assert isinstance(resource, Resource)
    return resource, diagnostics
