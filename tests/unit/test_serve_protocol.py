"""The serving runtime's OpenAI shapes, error bodies and stop sequences (pure pieces)."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import ValidationError

from runners.serve.errors import APIError, field_path, from_validation
from runners.serve.generation import Generation, StopScanner, finish_reason
from runners.serve.protocol import (
    CHAT_KEYS,
    EXTENSIONS,
    TEXT_KEYS,
    ChatRequest,
    CompletionRequest,
    FeedbackRequest,
    chat_chunk,
    chat_completion,
    dump,
    text_completion,
)

USER = [{"role": "user", "content": "hi"}]


def bad(model: type, data: dict[str, Any]) -> APIError:
    with pytest.raises(ValidationError) as raised:
        model.model_validate(data)
    return from_validation(raised.value)


def test_request_fields_are_openai_parameters() -> None:
    for model, keys in ((ChatRequest, CHAT_KEYS), (CompletionRequest, TEXT_KEYS)):
        assert set(model.model_fields) - EXTENSIONS <= keys, model


def test_chat_messages_become_plain_text_turns() -> None:
    req = ChatRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": None, "refusal": None},
            ],
            "stop": "\n",
            "max_completion_tokens": 5,
            "frequency_penalty": 0.5,  # an openai parameter this runtime ignores
        }
    )
    assert req.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": ""},
    ]
    assert req.stops() == ["\n"] and req.requested_tokens() == 5


@pytest.mark.parametrize(
    ("data", "param", "message"),
    [
        (
            {"temperature": -1},
            "temperature",
            "temperature: Input should be greater than or equal to 0",
        ),
        ({"top_p": 0}, "top_p", "top_p: Input should be greater than 0"),
        ({"max_tokens": 0}, "max_tokens", "max_tokens: Input should be greater than or equal to 1"),
        ({"messages": []}, "messages", "messages: List should have at least 1 item"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0]", "unknown role 'robot'"),
        (
            {"messages": [{"role": "user"}]},
            "messages[0].content",
            "messages[0].content: Field required",
        ),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 stop sequences"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages",
            "messages[0].content: a content part is malformed",
        ),
        (
            {"messages": [{"role": "function", "content": "x", "name": "f"}]},
            "messages",
            "role 'function' is not supported; use tools",
        ),
    ],
)
def test_invalid_chat_parameters_name_the_field(data: dict, param: str, message: str) -> None:
    error = bad(ChatRequest, {"model": "m", "messages": USER, **data})
    assert error.status == 400 and error.param == param
    assert message in error.message
    assert error.body()["error"]["type"] == "invalid_request_error"


def test_unknown_arguments_are_refused() -> None:
    error = bad(ChatRequest, {"model": "m", "messages": USER, "temprature": 1})
    assert "unrecognized request argument 'temprature'" in error.message
    assert bad(
        CompletionRequest, {"model": "m", "prompt": "x", "messages": USER}
    ).message.startswith("unrecognized request argument 'messages'")


@pytest.mark.parametrize(
    ("model", "data", "param"),
    [
        (ChatRequest, {"n": 2}, "n"),
        (ChatRequest, {"functions": [{"name": "f"}]}, "functions"),
        (CompletionRequest, {"echo": True, "stream": True}, "echo"),
        (CompletionRequest, {"best_of": 3}, "best_of"),
        (CompletionRequest, {"suffix": "x"}, "suffix"),
    ],
)
def test_unsupported_features_are_a_400_naming_them(model: type, data: dict, param: str) -> None:
    base = (
        {"model": "m", "messages": USER} if model is ChatRequest else {"model": "m", "prompt": "x"}
    )
    with pytest.raises(APIError) as raised:
        model.model_validate({**base, **data}).check_supported()
    assert raised.value.param == param and raised.value.code == "unsupported_parameter"


def test_completion_prompts_are_one_text() -> None:
    assert CompletionRequest.model_validate({"model": "m", "prompt": ["x"]}).text() == "x"
    assert CompletionRequest.model_validate({"model": "m", "prompt": "x"}).requested_tokens() == 16
    with pytest.raises(APIError, match="one prompt per request"):
        CompletionRequest.model_validate({"model": "m", "prompt": ["x", "y"]}).text()
    # token ids, as lm-eval's local-completions sends a prompt (one list, or a list of one)
    assert CompletionRequest.model_validate({"model": "m", "prompt": [1, 2]}).text() == [1, 2]
    assert CompletionRequest.model_validate({"model": "m", "prompt": [[1, 2]]}).text() == [1, 2]
    with pytest.raises(APIError, match="one prompt per request"):
        CompletionRequest.model_validate({"model": "m", "prompt": [[1], [2]]}).text()
    assert bad(CompletionRequest, {"model": "m", "prompt": [1, "x"]}).param == "prompt"


def test_feedback_shapes() -> None:
    assert FeedbackRequest.model_validate({"id": "c", "rating": 1}).verdict() == "up"
    assert FeedbackRequest.model_validate({"id": "c", "rating": "down"}).verdict() == "down"
    assert bad(FeedbackRequest, {"id": "c", "rating": 0}).param == "rating"
    assert bad(FeedbackRequest, {"id": "c", "rating": "up", "stars": 5}).param == "stars"
    assert bad(FeedbackRequest, {"rating": "up"}).param == "id"


def test_field_paths_leave_out_union_branches() -> None:
    assert field_path(("messages", 0, "user", "content")) == "messages[0].content"
    assert (
        field_path(("messages", 2, "ChatCompletionUserMessageParam", "name")) == "messages[2].name"
    )
    assert field_path(("stream_options", "include_usage")) == "stream_options.include_usage"


def test_responses_are_openai_objects_the_client_parses() -> None:
    result = Generation("Paris.", prompt_tokens=7, completion_tokens=3, finish_reason="stop")
    chat = dump(chat_completion("chatcmpl-1", "m", "m@2", 10, result))
    parsed = ChatCompletion.model_validate(chat)
    assert parsed.choices[0].message.content == "Paris." and parsed.usage.total_tokens == 10  # type: ignore[union-attr]
    chunk = dump(chat_chunk("chatcmpl-1", "m", "m@2", 10))
    assert chunk["choices"][0]["finish_reason"] is None  # present, as null, until the end
    assert ChatCompletionChunk.model_validate(chunk).object == "chat.completion.chunk"
    usage = dump(chat_chunk("chatcmpl-1", "m", "m@2", 10, result=result))
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3
    piece = dump(text_completion("cmpl-1", "m", "m@2", 10, "Par", None))
    assert piece["choices"][0] == {"index": 0, "text": "Par", "finish_reason": None}
    whole = Completion.model_validate(
        dump(text_completion("cmpl-1", "m", "m@2", 10, "Paris.", "stop", result))
    )
    assert whole.choices[0].finish_reason == "stop" and whole.usage.prompt_tokens == 7  # type: ignore[union-attr]


def feed(scanner: StopScanner, pieces: list[str]) -> list[str]:
    return [scanner.feed(p) for p in pieces] + [scanner.flush()]


def test_stop_sequences_across_pieces() -> None:
    scanner = StopScanner(["END", "\n\n"])
    assert feed(scanner, ["Hello E", "N", "D more"]) == ["Hello ", "", "", ""]
    assert scanner.stopped and finish_reason(scanner, 3, 10) == "stop"


def test_a_false_start_is_released() -> None:
    scanner = StopScanner(["END"])
    assert feed(scanner, ["a E", "Nd", " b"]) == ["a ", "ENd", " b", ""]
    assert not scanner.stopped and finish_reason(scanner, 10, 10) == "length"


def test_held_text_is_flushed_at_the_end() -> None:
    scanner = StopScanner(["</s>"])
    assert feed(scanner, ["x <", "/"]) == ["x ", "", "</"]


def test_without_stops_text_passes_through() -> None:
    assert feed(StopScanner([]), ["a", "b"]) == ["a", "b", ""]
    assert feed(StopScanner([""]), ["a"]) == ["a", ""]
