"""docs/integration.md's structured-output and tool-calling snippets, run as written against the
runtime serving the tiny model: the openai client, LangChain, instructor and LlamaIndex."""

from __future__ import annotations

import json
import os
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT_ROOT
from tests.serving import Runtime, running
from tests.structured_model import KEY, NAME, long_context, structured_config

DOC = PROJECT_ROOT / "docs" / "integration.md"


def snippet(name: str) -> str:
    """The fenced python block after `<!-- snippet: name -->` in docs/integration.md."""
    found = re.search(
        rf"<!-- snippet: {re.escape(name)} -->\n```python\n(.*?)\n```", DOC.read_text(), re.S
    )
    assert found, f"docs/integration.md has no snippet {name!r}"
    return found.group(1)


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    folder = tmp_path_factory.mktemp("structured-clients")
    model = long_context(tiny_model, folder / "model")
    env = {"LLMOPS_TEST_STRUCTURED_KEY": KEY}
    with running(structured_config(model), folder / "run", env=env) as runtime:
        yield runtime


def run_snippet(name: str, runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("LLMOPS_BASE_URL", f"{runtime.url}/v1")
    monkeypatch.setenv("LLMOPS_API_KEY", KEY)
    monkeypatch.setenv("LLMOPS_MODEL", NAME)
    # A real module, as a script would be: pydantic resolves annotations through it.
    module = types.ModuleType(f"snippet_{name.replace('-', '_')}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(snippet(name), f"docs/integration.md:{name}", "exec"), module.__dict__)
    return module.__dict__


def test_the_openai_snippet_parses_a_model_and_calls_a_tool(
    server: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = run_snippet("structured-openai", server, monkeypatch)
    ticket = done["ticket"]
    assert isinstance(ticket, done["Ticket"])
    assert ticket.category in ("billing", "login", "bug") and len(ticket.summary) <= 60
    assert done["call"].function.name == "get_order_status"
    assert 1 <= done["arguments"]["order_id"] <= 99999
    assert done["response"].choices[0].finish_reason == "tool_calls"
    assert done["final"].choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_the_langchain_and_instructor_snippet(
    server: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = run_snippet("structured-frameworks", server, monkeypatch)
    ticket_class = done["Ticket"]
    for name in ("ticket", "ticket_too", "ticket_by_tool"):
        assert isinstance(done[name], ticket_class), name
    call = done["order_call"]
    assert call["name"] == "GetOrderStatus" and call["id"].startswith("call_")
    assert isinstance(call["args"]["order_id"], int)
    assert json.dumps(call["args"])  # LangChain parsed the arguments into a dict


def test_langchain_streams_tool_calls_that_add_up(server: Runtime) -> None:
    """LangChain merges streamed tool-call chunks by index into the same call."""
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class GetOrderStatus(BaseModel):
        """The shipping status of an order."""

        order_id: int = Field(ge=1, le=99999)

    llm = ChatOpenAI(
        model=NAME, base_url=f"{server.url}/v1", api_key=KEY, temperature=0, max_tokens=200
    )
    bound = llm.bind_tools([GetOrderStatus], tool_choice="GetOrderStatus")
    whole = bound.invoke("Where is my order 42?")
    merged = None
    for chunk in bound.stream("Where is my order 42?"):
        merged = chunk if merged is None else merged + chunk
    assert merged is not None
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [
        (c["name"], c["args"]) for c in whole.tool_calls
    ]


def test_the_llamaindex_snippet_chats_streams_parses_and_calls_a_tool(
    server: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = run_snippet("structured-llamaindex", server, monkeypatch)
    assert isinstance(done["reply"], str) and done["reply"]
    assert isinstance(done["streamed"], str) and done["streamed"]
    ticket = done["ticket"]
    assert isinstance(ticket, done["Ticket"])
    assert ticket.category in ("billing", "login", "bug") and len(ticket.summary) <= 60
    selection = done["selection"]
    assert selection.tool_name == "get_order_status" and selection.tool_id.startswith("call_")
    assert 1 <= selection.tool_kwargs["order_id"] <= 99999
    assert done["status"] == "shipped"
    # What LlamaIndex received is the deployment's OpenAI-shaped tool call.
    assert done["response"].raw.choices[0].finish_reason == "tool_calls"


def test_no_snippet_left_untested() -> None:
    names = re.findall(r"<!-- snippet: (structured-[\w-]+) -->", DOC.read_text())
    assert sorted(names) == ["structured-frameworks", "structured-llamaindex", "structured-openai"]
    assert os.path.basename(__file__) in DOC.read_text()
