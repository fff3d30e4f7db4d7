"""Runner `arena`, endpoint judge: the pairwise judge prompt sent to an OpenAI-compatible
chat endpoint (`<base_url>/chat/completions`), greedy, through the shared client
(runners/arena/chat_endpoint.py: retries on 429/5xx with backoff, the key only in a header).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from runners.arena.chat_endpoint import ChatEndpoint, EndpointError
from runners.arena.judge import Reference, Verdict, judge_prompt, parse_verdict


class EndpointJudgeError(EndpointError):
    """The judge endpoint did not answer usefully after its retries; the message says why."""


class EndpointJudge:
    """A judge behind an OpenAI-compatible chat endpoint; counts requests and retries."""

    def __init__(
        self,
        base_url: str,
        model: str,
        rubric: str,
        api_key_env: str | None = None,
        max_new_tokens: int = 48,
        retries: int = 4,
        timeout_s: float = 60.0,
        backoff_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = ChatEndpoint(
            base_url,
            model,
            api_key_env=api_key_env,
            retries=retries,
            timeout_s=timeout_s,
            backoff_s=backoff_s,
            sleep=sleep,
            what="judge endpoint",
            fields="judge",
            error=EndpointJudgeError,
        )
        self.rubric = rubric
        self.max_new_tokens = max_new_tokens

    @property
    def requests(self) -> int:
        """HTTP requests sent, retries included."""
        return self.client.requests

    @property
    def retried(self) -> int:
        """Of those, retries after a 429, a 5xx or a dropped connection."""
        return self.client.retried

    def complete(self, prompt: str) -> str:
        """The endpoint's reply to one user message, greedy."""
        return self.client.chat(prompt, self.max_new_tokens, temperature=0).text

    def verdict(
        self, question: str, first: str, second: str, reference: Reference | None = None
    ) -> tuple[Verdict | None, str]:
        text = self.complete(judge_prompt(self.rubric, question, first, second, reference))
        return parse_verdict(text), text
