"""Runner `serve`, protocol: OpenAI request models and responses, built from `openai` types.

Requests are pydantic models over the field types of openai's `*CreateParams` TypedDicts,
with the ranges OpenAI documents; a field openai knows but this runtime does not honour is
ignored, one openai does not know is a 400 (a misspelt `temprature` must not pass silently).
Responses are openai's own pydantic models (`ChatCompletion`, `ChatCompletionChunk`,
`Completion`, `Model`), dumped to JSON.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, ClassVar, Literal

from openai.types import Completion, CompletionChoice, CompletionUsage, Model
from openai.types import completion_create_params as text_params
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionMessageParam,
    ChatCompletionStreamOptionsParam,
)
from openai.types.chat import chat_completion as chat_types
from openai.types.chat import chat_completion_chunk as chunk_types
from openai.types.chat import completion_create_params as chat_params
from openai.types.completion_choice import Logprobs
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from runners.serve.errors import APIError
from runners.serve.generation import FinishReason, Generation
from runners.serve.logprobs import MAX_TOP
from runners.serve.structured import history_fields

# Parameters this runtime adds, as vLLM does: at least this many tokens before EOS.
EXTENSIONS = {"min_tokens"}


def _openai_keys(params: Any) -> frozenset[str]:
    return frozenset(params.__required_keys__ | params.__optional_keys__)


CHAT_KEYS = _openai_keys(chat_params.CompletionCreateParamsStreaming)
TEXT_KEYS = _openai_keys(text_params.CompletionCreateParamsStreaming)


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")
    OPENAI_KEYS: ClassVar[frozenset[str]] = frozenset()

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = None
    stream_options: ChatCompletionStreamOptionsParam | None = None
    user: str | None = None
    min_tokens: int = Field(default=0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = cls.OPENAI_KEYS | EXTENSIONS
            unknown = sorted(k for k in data if k not in known)
            if unknown:
                raise ValueError(
                    f"unrecognized request argument {unknown[0]!r}; "
                    "see the OpenAI API reference for this endpoint"
                )
        return data

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    def refuse(self, reason: str | None, param: str) -> None:
        if reason:
            raise APIError(400, f"{param}: {reason}", param=param, code="unsupported_parameter")


Message = Annotated[ChatCompletionMessageParam, Field(discriminator="role")]


class ChatRequest(_Request):
    """openai.types.chat.CompletionCreateParams, the part honoured here."""

    OPENAI_KEYS: ClassVar[frozenset[str]] = CHAT_KEYS
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP)
    tools: list[Any] | None = None  # checked by structured.plan, which names the bad part
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("messages")
    @classmethod
    def _text_only(cls, messages: list[Any]) -> list[dict[str, Any]]:
        """Plain {role, content} dicts; text parts are joined, other parts refused."""
        out = []
        for index, message in enumerate(messages):
            role = message["role"]
            if role == "function":
                raise ValueError(f"messages[{index}]: role 'function' is not supported; use tools")
            content = message.get("content")
            if content is None:
                text = ""
            elif isinstance(content, str):
                text = content
            else:
                try:
                    parts = list(content)  # openai's Iterable is validated while iterated
                except ValidationError:
                    raise ValueError(
                        f"messages[{index}].content: a content part is malformed; send a "
                        "string or parts like {'type': 'text', 'text': '...'}"
                    ) from None
                for part in parts:
                    if part.get("type") != "text":
                        raise ValueError(
                            f"messages[{index}].content: part type '{part.get('type')}' is "
                            "not supported; send text"
                        )
                parts = [part["text"] for part in parts]
                text = "".join(parts)
            entry = {"role": "system" if role == "developer" else role, "content": text}
            out.append({**entry, **history_fields(message, index)})
        return out

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprob_request(self) -> tuple[int | None, bool]:
        """(alternatives per token, or None for no logprobs; score the prompt)."""
        return (self.top_logprobs or 0) if self.logprobs else None, False

    def check_supported(self) -> None:
        self.refuse("only n=1 is supported" if (self.n or 1) > 1 else None, "n")
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(
                400,
                "top_logprobs: set logprobs to true to use top_logprobs",
                param="top_logprobs",
                code="invalid_value",
            )
        self.refuse("function calling is not supported" if self.functions else None, "functions")


class CompletionRequest(_Request):
    """openai.types.CompletionCreateParams, the part honoured here."""

    OPENAI_KEYS: ClassVar[frozenset[str]] = TEXT_KEYS
    # Text, or token ids as lm-eval's local-completions sends them (one prompt per request).
    prompt: str | list[str] | list[int] | list[list[int]]
    # OpenAI's default for completions; 0 (only with echo) scores the prompt, generating nothing
    max_tokens: int | None = Field(default=16, ge=0)
    echo: bool | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP)
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, value: Any) -> Any:
        # One message for every malformed shape, rather than one per branch of the union.
        def ids(item: Any) -> bool:
            return isinstance(item, list) and all(
                isinstance(t, int) and not isinstance(t, bool) for t in item
            )

        if isinstance(value, str) or (isinstance(value, list) and value == []):
            return value
        if isinstance(value, list) and (
            all(isinstance(v, str) for v in value) or ids(value) or all(ids(v) for v in value)
        ):
            return value
        raise ValueError(
            "send a string, a list of strings, a list of token ids or a list of token-id lists"
        )

    def text(self) -> str | list[int]:
        """The one prompt: its text, or its token ids."""
        if isinstance(self.prompt, str):
            return self.prompt
        if self.prompt and isinstance(self.prompt[0], int):
            return list(self.prompt)  # type: ignore[arg-type]
        if len(self.prompt) != 1:
            raise APIError(
                400,
                f"prompt: send one prompt per request, got {len(self.prompt)}",
                param="prompt",
                code="unsupported_parameter",
            )
        return self.prompt[0]

    def requested_tokens(self) -> int | None:
        return self.max_tokens

    def logprob_request(self) -> tuple[int | None, bool]:
        """(alternatives per token, or None for no logprobs; score the prompt)."""
        return self.logprobs, bool(self.echo) and self.logprobs is not None

    def check_supported(self) -> None:
        self.refuse("only n=1 is supported" if (self.n or 1) > 1 else None, "n")
        self.refuse("only best_of=1 is supported" if (self.best_of or 1) > 1 else None, "best_of")
        streamed_echo = self.echo and self.stream
        self.refuse("echo is not supported with stream" if streamed_echo else None, "echo")
        if self.max_tokens == 0 and not self.echo:
            raise APIError(
                400,
                "max_tokens: 0 generates nothing; it is only useful with echo (prompt logprobs)",
                param="max_tokens",
                code="invalid_value",
            )
        self.refuse("suffix (insertion) is not supported" if self.suffix else None, "suffix")


class FeedbackRequest(BaseModel):
    """POST /v1/feedback: a person's verdict on one completion, joined to it by id."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=200)
    rating: Literal["up", "down", 1, -1]
    correction: str | None = Field(default=None, max_length=100_000)
    comment: str | None = Field(default=None, max_length=10_000)

    def verdict(self) -> Literal["up", "down"]:
        return "up" if self.rating in ("up", 1) else "down"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(result: Generation) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


def chat_completion(
    id: str,
    model: str,
    fingerprint: str,
    created: int,
    result: Generation,
    logprobs: chat_types.ChoiceLogprobs | None = None,
) -> ChatCompletion:
    return ChatCompletion(
        id=id,
        object="chat.completion",
        created=created,
        model=model,
        system_fingerprint=fingerprint,
        choices=[
            chat_types.Choice(
                index=0,
                finish_reason=result.finish_reason,
                message=ChatCompletionMessage(role="assistant", content=result.text),
                logprobs=logprobs,
            )
        ],
        usage=usage(result),
    )


def chat_chunk(
    id: str,
    model: str,
    fingerprint: str,
    created: int,
    delta: chunk_types.ChoiceDelta | None = None,
    finish: FinishReason | None = None,
    result: Generation | None = None,
    logprobs: chat_types.ChoiceLogprobs | None = None,
) -> ChatCompletionChunk:
    """A content chunk, the final chunk (finish set) or the usage chunk (result set)."""
    choices = []
    if result is None:
        choices = [
            chunk_types.Choice(
                index=0,
                delta=delta or chunk_types.ChoiceDelta(),
                finish_reason=finish,
                logprobs=(
                    chunk_types.ChoiceLogprobs(content=logprobs.content) if logprobs else None
                ),
            )
        ]
    return ChatCompletionChunk(
        id=id,
        object="chat.completion.chunk",
        created=created,
        model=model,
        system_fingerprint=fingerprint,
        choices=choices,
        usage=usage(result) if result is not None else None,
    )


def text_completion(
    id: str,
    model: str,
    fingerprint: str,
    created: int,
    text: str | None,
    finish: FinishReason | None,
    result: Generation | None = None,
    logprobs: Logprobs | None = None,
) -> Completion:
    """A whole completion, a streamed chunk of one (finish None), or the usage chunk (text None)."""
    choices = []
    if text is not None:
        # openai types finish_reason as always set; a streamed chunk carries null until the end.
        make = CompletionChoice if finish is not None else CompletionChoice.model_construct
        choices = [make(index=0, text=text, finish_reason=finish, logprobs=logprobs)]
    return Completion(
        id=id,
        object="text_completion",
        created=created,
        model=model,
        system_fingerprint=fingerprint,
        choices=choices,
        usage=usage(result) if result is not None else None,
    )


def model_card(name: str, version: str, created: int) -> Model:
    return Model(id=name, object="model", created=created, owned_by=version)


def dump(obj: BaseModel) -> dict[str, Any]:
    data = obj.model_dump(mode="json", exclude_none=True, warnings=False)
    # A streamed choice says finish_reason: null until its last chunk, as OpenAI's do.
    for choice, original in zip(data.get("choices", []), getattr(obj, "choices", []), strict=True):
        choice.setdefault("finish_reason", getattr(original, "finish_reason", None))
    return data


def now() -> int:
    return int(time.time())
