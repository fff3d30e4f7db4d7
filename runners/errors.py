"""Errors, shared by runners and the controller: the one base every expected failure uses.

An `LlmopsError`'s message says what went wrong and what to do; the CLI catches the base once
and prints it in one line with the error's exit code, and anything else is a bug shown as
one. `retryable` tells the controller whether running the same step again may succeed
(a busy apply, a database or cluster that is not reachable now) or not (bad data, a failed
gate, a broken model): permanent vs temporary errors, as Kopf has them.
"""

from __future__ import annotations

from typing import ClassVar


class LlmopsError(Exception):
    """An expected failure, permanent unless a subclass says otherwise."""

    retryable: ClassVar[bool] = False
    exit_code: ClassVar[int] = 1


class RetryableError(LlmopsError):
    """A failure of something outside llmops that may pass when tried again later."""

    retryable = True


class InvalidInput(LlmopsError):
    """The user's input (specs, lock file, arguments) is wrong: exit 2, fix and rerun."""

    exit_code = 2
