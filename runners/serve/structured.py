"""Runner `serve`, structured outputs and tool calling: what a chat request's `response_format`,
`tools` and `tool_choice` ask for (a `Plan`), the prompt that shows the tools to the model, the
schema its answer is constrained to, and the answer read back as OpenAI `tool_calls`.

Tool-call format. A chat template that mentions `tools` renders them itself
(`apply_chat_template(..., tools=...)`). Otherwise (the tiny test model's and SmolLM2's
templates) the tools are described in a system message, which asks for calls as

    {"tool_calls": [{"name": "<function>", "arguments": {...}}]}

With tool_choice "required" or a named function the answer is constrained to exactly that
shape (compact JSON, `arguments` valid against the function's `parameters`; one call for a
named function or when parallel_tool_calls is false). With "auto" the answer is free: it is
read as calls when it is that JSON, a single {"name", "arguments"|"parameters"} object, a
list of those, or <tool_call>...</tool_call> blocks of them, naming only offered functions;
anything else is text. "auto" arguments are whatever the model wrote (not validated).
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from openai.types.chat import chat_completion_chunk as chunk_types
from openai.types.chat.chat_completion_message_function_tool_call import (
    ChatCompletionMessageFunctionToolCall,
    Function,
)

from runners.serve.constrained import Constraint, json_constraint
from runners.serve.errors import APIError

NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
TOOLS_PROMPT = (
    "You can call functions. These are available, each with the JSON schema of its "
    "arguments:\n{tools}\nTo call functions, answer with only this JSON and nothing else:\n"
    '{{"tool_calls": [{{"name": "<function name>", "arguments": {{<arguments>}}}}]}}\n'
    "{rule}"
)
RULES = {
    "auto": "If no function is needed, answer in plain text.",
    "required": "You must call at least one function.",
    "named": "You must call the function {name}.",
}


def bad(param: str, message: str) -> APIError:
    return APIError(400, f"{param}: {message}", param=param, code="invalid_value")


@dataclass
class Plan:
    """What a chat request asks of its answer beyond text."""

    response: Constraint | None = None  # response_format json_object / json_schema
    tools: list[dict[str, Any]] = field(default_factory=list)  # offered, OpenAI's shape
    mode: str = "off"  # off (no tools, or tool_choice none), auto, required, named
    names: list[str] = field(default_factory=list)  # functions the answer may call
    parallel: bool = True

    @property
    def calls_tools(self) -> bool:
        return self.mode != "off"

    @property
    def forced(self) -> bool:
        """The answer is constrained to tool calls."""
        return self.mode in ("required", "named")


def plan(req: Any) -> Plan:
    """The Plan of a ChatRequest; 400 naming the field for anything malformed."""
    out = Plan(response=_response_format(req.response_format))
    if req.parallel_tool_calls is not None:
        out.parallel = bool(req.parallel_tool_calls)
    tools = req.tools or []
    if req.tools is not None and not tools:
        raise bad("tools", "send at least one tool, or leave tools out")
    names = [_tool(tool, index) for index, tool in enumerate(tools)]
    if len(set(names)) != len(names):
        raise bad("tools", "two tools have the same function name")
    out.tools = tools
    choice = req.tool_choice
    if choice is None:
        choice = "auto" if tools else "none"
    if not tools and choice != "none":
        raise bad("tool_choice", "tool_choice needs tools; send tools or leave tool_choice out")
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise bad(
                "tool_choice",
                f"unknown value {choice!r}; use none, auto, required "
                "or {'type': 'function', 'function': {'name': ...}}",
            )
        out.mode = "off" if choice == "none" else choice
        out.names = names
    else:
        name = _named_choice(choice)
        if name not in names:
            raise bad("tool_choice", f"no tool named {name!r}; tools offer {names}")
        out.mode, out.names = "named", [name]
    if out.calls_tools and out.response is not None:
        raise bad(
            "response_format",
            "a JSON response_format cannot be combined with tools the model may call; "
            "send tool_choice none, or leave response_format out",
        )
    return out


def _response_format(value: Any) -> Constraint | None:
    if value is None:
        return None
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return json_constraint({"type": "object"}, "response_format")
    if kind != "json_schema":
        raise bad(
            "response_format.type", f"unknown type {kind!r}; use text, json_object or json_schema"
        )
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise bad("response_format.json_schema", "send {'name': ..., 'schema': {...}}")
    name = spec.get("name")
    if name is not None and (not isinstance(name, str) or not NAME.fullmatch(name)):
        raise bad("response_format.json_schema.name", "use letters, digits, _ and - (up to 64)")
    if "schema" not in spec:
        raise bad("response_format.json_schema.schema", "the JSON schema is missing")
    return json_constraint(spec["schema"], "response_format.json_schema.schema")


def _tool(tool: Any, index: int) -> str:
    where = f"tools[{index}]"
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise bad(f"{where}.type", "only function tools are supported (type 'function')")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise bad(f"{where}.function", "send {'name': ..., 'parameters': {...}}")
    name = function.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise bad(f"{where}.function.name", "use letters, digits, _ and - (1 to 64)")
    parameters = function.get("parameters", NO_PARAMETERS)
    if not isinstance(parameters, dict):
        raise bad(f"{where}.function.parameters", "a JSON schema must be an object")
    return name


def _named_choice(choice: Any) -> str:
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return str(function["name"])
    raise bad(
        "tool_choice",
        "send none, auto, required or {'type': 'function', 'function': {'name': ...}}",
    )


# -- the schema the answer is constrained to --------------------------------------------


def parameters(plan: Plan, name: str) -> tuple[int, dict[str, Any]]:
    for index, tool in enumerate(plan.tools):
        function = tool["function"]
        if function["name"] == name:
            return index, function.get("parameters", NO_PARAMETERS)
    raise KeyError(name)


def calls_schema(plan: Plan) -> dict[str, Any]:
    """{"tool_calls": [{"name": const, "arguments": <parameters>}, ...]} for plan.names.

    Each function's schema goes under the root's $defs (its own local $refs rewritten to
    point there), so a pydantic-made schema with its own $defs still resolves.
    """
    defs: dict[str, Any] = {}
    items = []
    for name in plan.names:
        index, schema = parameters(plan, name)
        key = f"tool{index}"
        defs[key] = _rebase(schema, f"#/$defs/{key}")
        items.append(
            {
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": {"$ref": f"#/$defs/{key}"}},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    array: dict[str, Any] = {
        "type": "array",
        "items": items[0] if len(items) == 1 else {"anyOf": items},
        "minItems": 1,
    }
    if not plan.parallel or plan.mode == "named":  # a named function is called once
        array["maxItems"] = 1
    return {
        "type": "object",
        "properties": {"tool_calls": array},
        "required": ["tool_calls"],
        "additionalProperties": False,
        "$defs": defs,
    }


def _rebase(node: Any, base: str) -> Any:
    if isinstance(node, dict):
        out = {k: _rebase(v, base) for k, v in node.items()}
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            out["$ref"] = base + ref[1:]
        return out
    if isinstance(node, list):
        return [_rebase(v, base) for v in node]
    return node


def compile_plan(backend: Any, plan: Plan) -> Any:
    """The backend's compiled constraint for the answer, or None when it is free; a bad or
    unsupported schema is a 400 naming where it is."""
    compile = getattr(backend, "compile_constraint", None)
    if compile is None:
        if plan.response is not None:
            raise bad("response_format", f"not supported on the {backend.kind} backend")
        if plan.forced:
            raise bad(
                "tool_choice",
                f"required or named tool calls are not supported on the "
                f"{backend.kind} backend; use auto",
            )
        return None
    if plan.response is not None:
        return compile(plan.response)
    if not plan.calls_tools:
        return None
    # Each offered function's schema on its own first, so a 400 names the tool at fault.
    for index, tool in enumerate(plan.tools):
        schema = tool["function"].get("parameters", NO_PARAMETERS)
        compile(json_constraint(schema, f"tools[{index}].function.parameters"))
    if not plan.forced:
        return None
    return compile(json_constraint(calls_schema(plan), "tools"))


# -- the prompt --------------------------------------------------------------------------


def render(backend: Any, messages: list[dict[str, Any]], plan: Plan) -> str:
    """The chat prompt, tools included: by the model's template when it knows tools, else by
    a system message (TOOLS_PROMPT); earlier calls in the history are shown the same way."""
    template = str(getattr(backend, "chat_template", "") or "")
    native = "tools" in template
    shown = [_history(m, native) for m in messages]
    if not plan.calls_tools:
        return str(backend.chat_prompt(shown))
    if native:
        return str(backend.chat_prompt(shown, tools=plan.tools))
    listed = "\n".join(
        json.dumps(
            {
                "name": t["function"]["name"],
                "description": t["function"].get("description", ""),
                "parameters": t["function"].get("parameters", NO_PARAMETERS),
            },
            ensure_ascii=False,
        )
        for t in plan.tools
        if t["function"]["name"] in plan.names
    )
    rule = RULES[plan.mode].format(name=plan.names[0])
    prompt = TOOLS_PROMPT.format(tools=listed, rule=rule)
    if shown and shown[0]["role"] == "system":
        shown[0] = {**shown[0], "content": f"{shown[0]['content']}\n\n{prompt}"}
    else:
        shown.insert(0, {"role": "system", "content": prompt})
    return str(backend.chat_prompt(shown))


def _history(message: dict[str, Any], native: bool) -> dict[str, Any]:
    calls = message.get("tool_calls")
    if not calls:
        return message
    if native:  # Hugging Face templates take arguments as a mapping
        converted = []
        for call in calls:
            function = dict(call.get("function") or {})
            with contextlib.suppress(TypeError, json.JSONDecodeError):
                function["arguments"] = json.loads(function.get("arguments") or "{}")
            converted.append({**call, "function": function})
        return {**message, "tool_calls": converted}
    written = {"tool_calls": [_as_written(call) for call in calls]}
    content = json.dumps(written, ensure_ascii=False)
    rest = {k: v for k, v in message.items() if k != "tool_calls"}
    return {**rest, "content": f"{message.get('content') or ''}{content}"}


def _as_written(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments: Any = function.get("arguments") or "{}"
    with contextlib.suppress(TypeError, json.JSONDecodeError):
        arguments = json.loads(arguments)
    return {"name": function.get("name"), "arguments": arguments}


def history_fields(message: Any, index: int) -> dict[str, Any]:
    """The tool fields of one request message, kept for the template: an assistant's
    tool_calls (OpenAI's shape) and a tool message's tool_call_id."""
    out: dict[str, Any] = {}
    role = message["role"]
    if role == "assistant" and message.get("tool_calls"):
        try:
            listed = list(message["tool_calls"])  # openai's Iterable is validated while iterated
        except ValueError:
            raise ValueError(
                f"messages[{index}].tool_calls: a call is malformed; send "
                "{'id', 'type': 'function', 'function': {'name', 'arguments'}}"
            ) from None
        calls = []
        for number, call in enumerate(listed):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise ValueError(
                    f"messages[{index}].tool_calls[{number}]: send "
                    "{'id', 'type': 'function', 'function': {'name', 'arguments'}}"
                )
            calls.append(
                {
                    "id": str(call.get("id") or ""),
                    "type": "function",
                    "function": {
                        "name": function["name"],
                        "arguments": str(function.get("arguments") or "{}"),
                    },
                }
            )
        out["tool_calls"] = calls
    if role == "tool":
        out["tool_call_id"] = str(message.get("tool_call_id") or "")
    return out


# -- the answer read back ----------------------------------------------------------------


@dataclass
class Call:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


_HEAD = re.compile(r'\s*\{\s*"tool_calls"\s*:\s*\[\s*')
_CALL = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
_AFTER = re.compile(r"\s*\}\s*(?:(,)\s*|\]\s*\}\s*$)")
_TAGGED = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def scan(text: str) -> tuple[list[tuple[str, str, bool]], bool]:
    """The calls in (a prefix of) the canonical format: (name, arguments text so far, whether
    the arguments are complete) each, and whether the whole text is read. Arguments are the
    model's own text, so a stream's fragments add up to the finished answer's exactly."""
    calls: list[tuple[str, str, bool]] = []
    head = _HEAD.match(text)
    if head is None:
        return calls, False
    position = head.end()
    while True:
        call = _CALL.match(text, position)
        if call is None:
            return calls, False
        try:
            name = json.loads(f'"{call.group(1)}"')
        except json.JSONDecodeError:
            return calls, False
        start = call.end()
        end = _value_end(text, start)
        if end is None:
            calls.append((name, text[start:], False))
            return calls, False
        calls.append((name, text[start:end], True))
        after = _AFTER.match(text, end)
        if after is None:
            return calls, False
        if after.group(1) is None:
            return calls, True
        position = after.end()


def _value_end(text: str, start: int) -> int | None:
    """Where the JSON object starting at `start` ends (one past its brace), or None."""
    if start >= len(text) or text[start] != "{":
        return None
    depth, quoted, escaped = 0, False, False
    for index in range(start, len(text)):
        char = text[index]
        if quoted:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return index + 1
    return None


def parse_calls(text: str, names: list[str]) -> list[Call] | None:
    """The answer's tool calls, or None when it is text (see the module docstring)."""
    calls, whole = scan(text)
    if whole:
        found = []
        for name, arguments, _ in calls:
            try:
                ok = isinstance(json.loads(arguments), dict)
            except json.JSONDecodeError:
                ok = False
            if not ok or name not in names:
                return None
            found.append(Call(name, arguments))
        return found
    tagged = _TAGGED.findall(text)
    candidates: list[Any] = []
    try:
        if tagged and not _TAGGED.sub("", text).strip():
            candidates = [json.loads(block) for block in tagged]
        else:
            candidates = [json.loads(text)]
    except json.JSONDecodeError:
        return None
    items: list[Any] = []
    for candidate in candidates:
        if isinstance(candidate, dict) and isinstance(candidate.get("tool_calls"), list):
            items += candidate["tool_calls"]
        elif isinstance(candidate, list):
            items += candidate
        else:
            items.append(candidate)
    found = []
    for item in items:
        if not isinstance(item, dict) or item.get("name") not in names:
            return None
        arguments = item.get("arguments", item.get("parameters"))
        if not isinstance(arguments, dict):
            return None
        found.append(Call(str(item["name"]), json.dumps(arguments, ensure_ascii=False)))
    return found or None


def message_calls(calls: list[Call]) -> list[dict[str, Any]]:
    """A message's tool_calls as OpenAI's JSON."""
    return [
        ChatCompletionMessageFunctionToolCall(
            id=c.id, type="function", function=Function(name=c.name, arguments=c.arguments)
        ).model_dump(mode="json")
        for c in calls
    ]


def with_calls(body: dict[str, Any], calls: list[Call]) -> dict[str, Any]:
    """A chat.completion body answering with tool calls instead of text."""
    choice = body["choices"][0]
    choice["message"] = {"role": "assistant", "content": None, "tool_calls": message_calls(calls)}
    choice["finish_reason"] = "tool_calls"
    return body


class ToolStream:
    """A streamed answer that may be tool calls: pieces become content deltas, or tool-call
    deltas as OpenAI streams them (a call's id, type and name first, with arguments "", then
    its arguments in fragments). Forced calls stream as they are generated; under "auto"
    text that may still become a call is held until it can be told apart."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.held = ""
        self.passing = False  # the answer is text: pieces go out as they come
        self.sent: list[tuple[str, int]] = []  # per call: its id, argument characters sent
        self.calls: list[Call] | None = None

    def piece(self, text: str) -> list[chunk_types.ChoiceDelta]:
        if self.passing:
            return [chunk_types.ChoiceDelta(content=text)]
        self.held += text
        if self.plan.forced:
            calls, _ = scan(self.held)
            return self._progress([(name, arguments) for name, arguments, _ in calls])
        start = self.held.lstrip()[:11]
        if start and not (
            start[0] in "{[" or "<tool_call>".startswith(start) or start == "<tool_call>"
        ):
            self.passing = True
            out, self.held = self.held, ""
            return [chunk_types.ChoiceDelta(content=out)]
        return []

    def finish(self) -> list[chunk_types.ChoiceDelta]:
        """What is still to send once the answer is complete."""
        if self.passing:
            return []
        self.calls = parse_calls(self.held, self.plan.names)
        if self.calls is None:
            if self.plan.forced or not self.held:
                return []  # forced but cut short (finish_reason length): sent as it came
            return [chunk_types.ChoiceDelta(content=self.held)]
        for call, (id, _) in zip(self.calls, self.sent, strict=False):
            call.id = id
        return self._progress([(c.name, c.arguments) for c in self.calls])

    def _progress(self, calls: list[tuple[str, str]]) -> list[chunk_types.ChoiceDelta]:
        out = []
        for index, (name, arguments) in enumerate(calls):
            if index >= len(self.sent):
                id = f"call_{uuid.uuid4().hex[:24]}"
                self.sent.append((id, 0))
                function = chunk_types.ChoiceDeltaToolCallFunction(name=name, arguments="")
                out.append(_call_delta(index, id=id, type="function", function=function))
            id, done = self.sent[index]
            if len(arguments) > done:
                function = chunk_types.ChoiceDeltaToolCallFunction(arguments=arguments[done:])
                out.append(_call_delta(index, function=function))
                self.sent[index] = (id, len(arguments))
        return out


def _call_delta(index: int, **fields: Any) -> chunk_types.ChoiceDelta:
    call = chunk_types.ChoiceDeltaToolCall(index=index, **fields)
    return chunk_types.ChoiceDelta(tool_calls=[call])
