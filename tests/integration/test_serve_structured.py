"""Structured outputs and tool calling on the serving runtime (transformers backend, tiny random
model), through the official openai client: constrained answers are schema-valid every time,
streamed tool calls add up to the non-streamed ones, and bad schemas or tool names are 400s."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import jsonschema
import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel, ConfigDict, Field

from tests.serving import Runtime, running
from tests.structured_model import KEY, NAME, long_context, structured_config

RUNS = 20  # per check here; benchmarks/structured_throughput.py measures 100
ASK = [{"role": "user", "content": "Place an order for me, as JSON."}]


class Address(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: str = Field(max_length=12)
    zip: int = Field(ge=0, le=99999)


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["book", "pen", "cup"]
    quantity: int = Field(ge=1, le=9)


class Order(BaseModel):
    """An object with a nested object and an array of objects with enums."""

    model_config = ConfigDict(extra="forbid")
    customer: str = Field(max_length=20)
    address: Address
    items: list[Item] = Field(max_length=3)
    priority: Literal["low", "high"]


ORDER = Order.model_json_schema()
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 16},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"enum": ["UTC", "CET", "PST"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Forecast", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    folder = tmp_path_factory.mktemp("structured")
    model = long_context(tiny_model, folder / "model")
    env = {"LLMOPS_TEST_STRUCTURED_KEY": KEY}
    with running(structured_config(model), folder / "run", env=env) as runtime:
        yield runtime


def api(runtime: Runtime) -> OpenAI:
    return OpenAI(base_url=f"{runtime.url}/v1", api_key=KEY, max_retries=0)


def many(call: Any, seeds: range) -> list[Any]:
    with ThreadPoolExecutor(8) as pool:  # concurrent: they share the batch
        return list(pool.map(call, seeds))


def is_valid(text: str | None, schema: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(json.loads(text or ""), schema)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True


def test_a_nested_json_schema_is_answered_valid_every_time(server: Runtime) -> None:
    client = api(server)
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "order", "schema": ORDER, "strict": True},
    }

    def constrained(seed: int) -> Any:
        return client.chat.completions.create(
            model=NAME, messages=ASK, temperature=1.0, seed=seed, response_format=response_format
        )

    def free(seed: int) -> Any:
        return client.chat.completions.create(
            model=NAME, messages=ASK, temperature=1.0, seed=seed, max_tokens=120
        )

    answers = many(constrained, range(RUNS))
    valid = sum(is_valid(a.choices[0].message.content, ORDER) for a in answers)
    unconstrained = sum(
        is_valid(a.choices[0].message.content, ORDER) for a in many(free, range(RUNS))
    )
    print(f"\nschema-valid: constrained {valid}/{RUNS}, unconstrained {unconstrained}/{RUNS}")
    assert valid == RUNS
    assert all(a.choices[0].finish_reason == "stop" for a in answers)
    orders = [Order.model_validate_json(a.choices[0].message.content) for a in answers]
    assert len({o.model_dump_json() for o in orders}) > RUNS // 2  # sampled, not one answer
    assert unconstrained < RUNS  # a random model does not write this JSON unaided


def test_the_clients_parse_helper_gets_the_pydantic_model(server: Runtime) -> None:
    """openai's own structured-output path: a pydantic class in, its strict schema sent, the
    answer parsed back into the class."""
    completion = api(server).chat.completions.parse(
        model=NAME, messages=ASK, response_format=Order, temperature=0
    )
    order = completion.choices[0].message.parsed
    assert isinstance(order, Order)
    assert order.priority in ("low", "high") and len(order.items) <= 3


def test_json_object_mode_answers_a_json_object(server: Runtime) -> None:
    client = api(server)
    answers = many(
        lambda seed: client.chat.completions.create(
            model=NAME,
            messages=ASK,
            temperature=1.0,
            seed=seed,
            response_format={"type": "json_object"},
        ),
        range(8),
    )
    finished = [a for a in answers if a.choices[0].finish_reason == "stop"]
    assert finished  # a free-form object may run past max_tokens; most do not
    for answer in finished:
        assert isinstance(json.loads(answer.choices[0].message.content), dict)


def test_required_tool_calls_have_arguments_valid_against_the_schema(server: Runtime) -> None:
    client = api(server)

    def call(seed: int) -> Any:
        return client.chat.completions.create(
            model=NAME,
            messages=[{"role": "user", "content": "What's the weather in Paris?"}],
            tools=TOOLS,
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=1.0,
            seed=seed,
        )

    answers = many(call, range(RUNS))
    valid = 0
    for answer in answers:
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (tool_call,) = choice.message.tool_calls
        assert tool_call.id.startswith("call_") and tool_call.type == "function"
        name = tool_call.function.name
        valid += name in SCHEMAS and is_valid(tool_call.function.arguments, SCHEMAS[name])
    assert valid == RUNS
    assert len({a.choices[0].message.tool_calls[0].function.name for a in answers}) == 2


def test_a_named_tool_choice_calls_that_function(server: Runtime) -> None:
    answer = api(server).chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "What time is it?"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=0,
    )
    calls = answer.choices[0].message.tool_calls
    assert calls and {c.function.name for c in calls} == {"get_time"}
    assert all(is_valid(c.function.arguments, TIME) for c in calls)


def test_parallel_calls_may_be_several_each_valid(server: Runtime) -> None:
    client = api(server)
    answers = many(
        lambda seed: client.chat.completions.create(
            model=NAME, messages=ASK, tools=TOOLS, tool_choice="required", seed=seed
        ),
        range(8),
    )
    for answer in answers:
        if answer.choices[0].finish_reason == "length":
            continue  # a random model may keep adding calls until max_tokens
        calls = answer.choices[0].message.tool_calls
        assert calls and all(
            is_valid(c.function.arguments, SCHEMAS[c.function.name]) for c in calls
        )
        assert len({c.id for c in calls}) == len(calls)
    assert sum(a.choices[0].finish_reason == "tool_calls" for a in answers) >= 4


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 11}])
def test_streamed_tool_calls_reassemble_to_the_non_streamed_ones(
    server: Runtime, sampling: dict[str, Any]
) -> None:
    client = api(server)
    request: dict[str, Any] = {
        "model": NAME,
        "messages": [{"role": "user", "content": "Weather and time, please."}],
        "tools": TOOLS,
        "tool_choice": "required",
        **sampling,
    }
    whole = client.chat.completions.create(**request)
    expected = [
        (c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls
    ]
    chunks = list(client.chat.completions.create(**request, stream=True))
    calls: dict[int, dict[str, Any]] = {}
    fragments = 0
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if delta.id is not None:  # a call's first delta: id, type and name, arguments ""
                assert delta.index not in calls and delta.type == "function"
                assert delta.id.startswith("call_") and delta.function.name
                assert delta.function.arguments == ""
                calls[delta.index] = {"name": delta.function.name, "arguments": ""}
            else:
                assert delta.function.name is None
                calls[delta.index]["arguments"] += delta.function.arguments
                fragments += 1
    assert [(c["name"], c["arguments"]) for _, c in sorted(calls.items())] == expected
    assert fragments > len(expected)  # the arguments arrive in pieces, as they are generated
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls" and not any(finishes[:-1])


def test_tool_results_in_the_history_are_accepted(server: Runtime) -> None:
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Paris", "unit": "celsius", "days": 1}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
    ]
    answer = api(server).chat.completions.create(
        model=NAME, messages=history, tools=TOOLS, max_tokens=8, temperature=0
    )
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    none = api(server).chat.completions.create(
        model=NAME, messages=history, tools=TOOLS, tool_choice="none", max_tokens=8
    )
    assert none.choices[0].message.tool_calls is None


BAD_SCHEMA = {"type": "object", "properties": {"a": {"type": "strin"}}}
DEEP_SCHEMA = json.loads('{"items":' * 200 + "{}" + "}" * 200)  # nested past any limit


@pytest.mark.parametrize(
    ("extra", "param", "says"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": BAD_SCHEMA},
                }
            },
            "response_format.json_schema.schema",
            "strin",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}},
            "response_format.json_schema.schema",
            "must be an object",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema.schema",
            "missing",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/Nope"}},
                }
            },
            "response_format.json_schema.schema",
            "Nope",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {"type": "integer", "minimum": 5, "maximum": 1},
                    },
                }
            },
            "response_format.json_schema.schema",
            "Unsatisfiable",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": DEEP_SCHEMA},
                }
            },
            "response_format.json_schema.schema",
            "recursion",
        ),
        ({"response_format": {"type": "xml"}}, "response_format.type", "xml"),
        ({"response_format": "json"}, "response_format", "dictionary"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "nope",
        ),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "sometimes"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": 3}}},
            "tool_choice",
            "function",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
            "tools[0].function.parameters",
            "must be an object",
        ),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        (
            {
                "tools": [
                    TOOLS[0],
                    {"type": "function", "function": {"name": "f", "parameters": BAD_SCHEMA}},
                ],
                "tool_choice": "required",
            },
            "tools[1].function.parameters",
            "strin",
        ),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type", "function"),
        (
            {"tools": [{"type": "function", "function": {"name": "a b"}}]},
            "tools[0].function.name",
            "",
        ),
        (
            {"tools": TOOLS, "response_format": {"type": "json_object"}},
            "response_format",
            "tool_choice none",
        ),
    ],
)
def test_bad_schemas_and_tool_names_are_a_400_naming_the_field(
    server: Runtime, extra: dict[str, Any], param: str, says: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        api(server).chat.completions.create(model=NAME, messages=ASK, max_tokens=4, **extra)
    error = raised.value
    assert error.status_code == 400 and error.param == param
    assert says in error.message


def test_the_runtime_answers_after_bad_requests(server: Runtime) -> None:
    """The 400s above left the batch and the grammar cache usable."""
    answer = api(server).chat.completions.create(
        model=NAME,
        messages=ASK,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "o", "schema": ORDER}},
    )
    assert is_valid(answer.choices[0].message.content, ORDER)
