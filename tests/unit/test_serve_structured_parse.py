"""structured.py without a model: request plans, the tool-call schema, answers read as calls,
and the deltas a streamed answer becomes."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from runners.serve.constrained import closed
from runners.serve.errors import APIError
from runners.serve.protocol import ChatRequest
from runners.serve.structured import Plan, ToolStream, calls_schema, parse_calls, plan, scan

USER = [{"role": "user", "content": "hi"}]
ADDRESS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
SHIP = {  # as pydantic writes it: a $ref into its own $defs
    "type": "object",
    "$defs": {"Address": ADDRESS},
    "properties": {"to": {"$ref": "#/$defs/Address"}},
    "required": ["to"],
}
TOOLS = [
    {"type": "function", "function": {"name": "ship", "parameters": SHIP}},
    {"type": "function", "function": {"name": "now"}},
]


def request(**extra: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "m", "messages": USER, **extra})


def test_plans() -> None:
    assert plan(request()).mode == "off"
    assert plan(request(tools=TOOLS)).mode == "auto"
    assert plan(request(tools=TOOLS, tool_choice="none")).mode == "off"
    named = plan(
        request(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "now"}})
    )
    assert (named.mode, named.names, named.forced) == ("named", ["now"], True)
    assert plan(request(tools=TOOLS, parallel_tool_calls=False)).parallel is False
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": ADDRESS}}
    response = plan(request(response_format=schema)).response
    assert response is not None and response.schema == ADDRESS
    assert response.param == "response_format.json_schema.schema"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tools": TOOLS, "tool_choice": {"type": "function"}}, "tool_choice"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"tools": []}, "tools"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
            "tools[0].function.parameters",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x y", "schema": {}},
                }
            },
            "response_format.json_schema.name",
        ),
    ],
)
def test_bad_plans_name_the_field(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(APIError) as raised:
        plan(request(**extra))
    assert raised.value.status == 400 and raised.value.param == param


def test_the_calls_schema_resolves_each_tools_own_refs() -> None:
    schema = calls_schema(Plan(tools=TOOLS, mode="required", names=["ship", "now"], parallel=False))
    good = {"tool_calls": [{"name": "ship", "arguments": {"to": {"city": "Oslo"}}}]}
    jsonschema.validate(good, schema)
    twice = {"tool_calls": [{"name": "now", "arguments": {}}] * 2}
    jsonschema.validate(twice, calls_schema(Plan(tools=TOOLS, mode="required", names=["now"])))
    with pytest.raises(jsonschema.ValidationError):  # a named function is called once
        jsonschema.validate(twice, calls_schema(Plan(tools=TOOLS, mode="named", names=["now"])))
    for bad in (
        {"tool_calls": [{"name": "ship", "arguments": {"to": {"town": "Oslo"}}}]},
        {"tool_calls": [{"name": "now", "arguments": {}}, {"name": "now", "arguments": {}}]},
        {"tool_calls": []},
        {"tool_calls": [{"name": "other", "arguments": {}}]},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_answers_read_as_calls() -> None:
    names = ["ship", "now"]
    canonical = (
        '{"tool_calls":[{"name":"now","arguments":{}},'
        '{"name":"ship","arguments":{"to":{"city":"a}\\""}}}]}'
    )
    calls = parse_calls(canonical, names)
    assert calls is not None
    assert [(c.name, c.arguments) for c in calls] == [
        ("now", "{}"),
        ("ship", '{"to":{"city":"a}\\""}}'),
    ]
    assert all(c.id.startswith("call_") for c in calls)
    for text in (
        '{"name": "now", "arguments": {}}',
        '[{"name": "now", "parameters": {}}]',
        '<tool_call>{"name": "now", "arguments": {}}</tool_call>',
    ):
        parsed = parse_calls(text, names)
        assert parsed is not None and [(c.name, c.arguments) for c in parsed] == [("now", "{}")]
    for text in (
        "hello",
        '{"name": "other", "arguments": {}}',
        '{"a": 1}',
        '{"tool_calls":[{"name":"now","arguments":{}}',
        "",
    ):
        assert parse_calls(text, names) is None, text


def test_a_prefix_scans_to_partial_arguments() -> None:
    assert scan('{"tool_calls":[{"name":"ship","arguments":{"to":{"ci') == (
        [("ship", '{"to":{"ci', False)],
        False,
    )


def deltas_to_calls(deltas: list[Any]) -> list[tuple[str, str]]:
    calls: dict[int, list[str]] = {}
    for delta in deltas:
        for call in delta.tool_calls or []:
            if call.id is not None:
                calls[call.index] = [call.function.name, ""]
            calls[call.index][1] += call.function.arguments or ""
    return [(name, arguments) for _, (name, arguments) in sorted(calls.items())]


def test_forced_calls_stream_as_they_are_generated() -> None:
    text = (
        '{"tool_calls":[{"name":"now","arguments":{}},'
        '{"name":"ship","arguments":{"to":{"city":"Oslo"}}}]}'
    )
    stream = ToolStream(Plan(tools=TOOLS, mode="required", names=["ship", "now"]))
    deltas = []
    for index in range(0, len(text), 3):
        got = stream.piece(text[index : index + 3])
        deltas += got
    deltas += stream.finish()
    assert stream.calls is not None
    assert deltas_to_calls(deltas) == [(c.name, c.arguments) for c in stream.calls]
    assert len(deltas) > 6 and not any(d.content for d in deltas)


def test_auto_passes_text_through_and_holds_a_possible_call() -> None:
    auto = Plan(tools=TOOLS, mode="auto", names=["ship", "now"])
    text = ToolStream(auto)
    assert text.piece("  ") == [] and text.piece("Hel")[0].content == "  Hel"
    assert text.piece("lo")[0].content == "lo" and text.finish() == [] and text.calls is None
    call = ToolStream(auto)
    assert call.piece('{"name": "now", ') == [] and call.piece('"arguments": {}}') == []
    assert deltas_to_calls(call.finish()) == [("now", "{}")]
    brace = ToolStream(auto)
    assert brace.piece("{not json") == []
    assert [d.content for d in brace.finish()] == ["{not json"] and brace.calls is None
    assert json.dumps(auto.names)


def test_object_schemas_are_closed_unless_they_say_otherwise() -> None:
    schema = {
        "type": "object",
        "properties": {
            "properties": {"type": "object", "properties": {"a": {"type": "integer"}}},
            "tags": {"type": "array", "items": {"type": "object", "properties": {}}},
            "free": {"type": "object", "properties": {}, "additionalProperties": True},
        },
        "$defs": {"X": {"anyOf": [{"properties": {"b": {}}}]}},
    }
    done = closed(schema)
    assert done["additionalProperties"] is False
    inner = done["properties"]
    assert set(inner) == {"properties", "tags", "free"}  # a property named "properties" kept
    assert inner["properties"]["additionalProperties"] is False
    assert inner["tags"]["items"]["additionalProperties"] is False
    assert inner["free"]["additionalProperties"] is True
    assert done["$defs"]["X"]["anyOf"][0]["additionalProperties"] is False
    assert closed({"type": "object"}) == {"type": "object"}  # json_object stays open
