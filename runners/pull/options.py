"""Runner `pull`, shared types: the options a fetch runs with, what it returns, its error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runners.errors import LlmopsError

Report = Callable[[str], None]


class PullError(LlmopsError):
    """A permanent problem with a source; the message says what to do."""


@dataclass(frozen=True)
class FetchOptions:
    repo_root: Path
    dtype: str = "auto"
    allow_pickle: bool = False
    trust_remote_code: bool = False
    license: str | None = None
    report: Report = print


@dataclass
class FetchResult:
    folder: Path
    metadata: dict[str, Any] = field(default_factory=dict)
