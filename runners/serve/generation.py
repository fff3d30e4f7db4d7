"""Runner `serve`, generation: what a backend is asked for and returns, and stop sequences."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from runners.serve.logprobs import TokenLogprob

FinishReason = Literal["stop", "length", "tool_calls"]  # tool_calls: routes only


class _Stopped(Exception):
    """A generation ended early; `completion_tokens` were computed before it did."""

    def __init__(self, completion_tokens: int = 0) -> None:
        super().__init__()
        self.completion_tokens = completion_tokens


class GenerationTimeout(_Stopped):
    """The request ran past the deployment's timeout_s."""


class GenerationCancelled(_Stopped):
    """The client went away or the server is stopping."""


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    min_tokens: int = 0
    # Log-probabilities (logprobs.py): None, none; else this many alternatives per token.
    logprobs: int | None = None
    echo: bool = False  # also score the prompt's tokens (completions' echo)
    # Constrained decoding: what the backend's compile_constraint returned (constrained.py),
    # copied per request; None decodes freely.
    constraint: Any = None
    # The LoRA adapter this request runs with (config.adapters, by its served name); None:
    # the base model. Only the transformers backend serves adapters.
    adapter: str | None = None


@dataclass
class Control:
    """Shared between the event loop and the generating thread."""

    deadline: float = math.inf  # time.monotonic() value
    cancelled: threading.Event = field(default_factory=threading.Event)
    timed_out: bool = False

    def should_stop(self) -> bool:
        if self.cancelled.is_set():
            return True
        if time.monotonic() > self.deadline:
            self.timed_out = True
            return True
        return False

    def raise_if_stopped(self, completion_tokens: int = 0) -> None:
        if self.timed_out:
            raise GenerationTimeout(completion_tokens)
        if self.cancelled.is_set():
            raise GenerationCancelled(completion_tokens)


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    logprobs: list[TokenLogprob] | None = None  # generated tokens, when Sampling.logprobs
    prompt_logprobs: list[TokenLogprob] | None = None  # prompt tokens, when Sampling.echo


class Backend(Protocol):
    """A loaded model that turns a prompt into text, calling `emit` with each new piece."""

    kind: str
    context_length: int | None
    vocab_size: int | None

    def chat_prompt(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> str: ...

    def compile_constraint(self, constraint: Any) -> Any:
        """constrained.Constraint -> what Sampling.constraint carries; APIError 400 if bad."""
        ...

    def count_tokens(self, prompt: str, chat: bool) -> int: ...

    def decode(self, ids: list[int]) -> str: ...

    def generate(
        self,
        prompt: str | list[int],  # text, or token ids (a completions prompt, as lm-eval sends)
        chat: bool,
        sampling: Sampling,
        emit: Callable[[str], None],
        control: Control,
    ) -> Generation: ...


class StopScanner:
    """Cuts the output at the first stop sequence; holds back text that may start one.

    OpenAI's `stop` excludes the sequence itself from the answer, and a stream must never
    show the first half of a stop sequence, so a tail that is a prefix of one waits.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.buffer = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The part of the text seen so far that is safe to show now."""
        if self.stopped:
            return ""
        self.buffer += text
        if not self.stops:
            out, self.buffer = self.buffer, ""
            return out
        cuts = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if cuts:
            out = self.buffer[: min(cuts)]
            self.buffer = ""
            self.stopped = True
            return out
        hold = 0
        for size in range(min(len(self.buffer), max(len(s) for s in self.stops) - 1), 0, -1):
            tail = self.buffer[-size:]
            if any(s.startswith(tail) for s in self.stops):
                hold = size
                break
        out = self.buffer[: len(self.buffer) - hold]
        self.buffer = self.buffer[len(self.buffer) - hold :]
        return out

    def flush(self) -> str:
        """What is still held back once generation ended without a stop sequence."""
        out = "" if self.stopped else self.buffer
        self.buffer = ""
        return out


def finish_reason(scanner: StopScanner, generated: int, max_tokens: int) -> FinishReason:
    if scanner.stopped:
        return "stop"
    return "length" if generated >= max_tokens else "stop"
