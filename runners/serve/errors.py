"""Runner `serve`, errors: every failure as OpenAI's error body, so clients raise typed errors."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

_ROLE_TAGS = {"developer", "system", "user", "assistant", "tool", "function"}
_CLASS_NAME = re.compile(r"[A-Z]\w*")


class APIError(Exception):
    """An HTTP error answered as {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def field_path(loc: tuple[int | str, ...]) -> str:
    """'messages[0].content' from pydantic's loc, without union branch names."""
    out = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _CLASS_NAME.fullmatch(part) or (
            isinstance(previous, int) and part in _ROLE_TAGS and out.startswith("messages")
        ):
            pass  # a union branch (openai's TypedDict name or the role tag), not a field
        else:
            out += f".{part}" if out else part
        previous = part
    return out


def from_validation(err: ValidationError) -> APIError:
    """400 naming the first bad field; how many more there are, when there are."""
    errors = err.errors()
    first = errors[0]
    param = field_path(tuple(first["loc"]))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "union_tag_invalid":
        ctx = first["ctx"]
        message = f"unknown {ctx['discriminator'].strip(chr(39))} {ctx['tag']!r}"
        message += f"; expected one of {ctx['expected_tags']}"
    # A validator that names the exact place ('messages[0]: ...') keeps its own prefix.
    text = f"{param}: {message}" if param and not message.startswith(param) else message
    # A value that fails every branch of a union shows one error per branch; count fields.
    others = {field_path(tuple(e["loc"])) for e in errors[1:]} - {param}
    if others:
        text += f" (and problems with {', '.join(sorted(others)[:3])})"
    return APIError(400, text, param=param or None, code="invalid_value")
