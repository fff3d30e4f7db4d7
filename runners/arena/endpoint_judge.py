"""Runner `arena`, endpoint judge: the pairwise judge prompt sent to an OpenAI-compatible
chat endpoint (`<base_url>/chat/completions`), greedy; 429 and 5xx replies and dropped
connections are retried with exponential backoff (a Retry-After header is honoured, capped).

The key is read from its environment variable when a request is made and sent only in the
Authorization header; it is in no message, record or return value.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from runners.arena.judge import Reference, Verdict, judge_prompt, parse_verdict
from runners.errors import InvalidInput, LlmopsError

MAX_WAIT_S = 30.0


class EndpointJudgeError(LlmopsError):
    """The endpoint did not answer usefully after its retries; the message says why."""


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
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.rubric = rubric
        self.api_key_env = api_key_env
        self.max_new_tokens = max_new_tokens
        self.retries = retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.sleep = sleep
        self.requests = 0  # HTTP requests sent, retries included
        self.retried = 0  # of those, retries after a 429, a 5xx or a dropped connection
        if api_key_env is not None and not os.environ.get(api_key_env):
            raise InvalidInput(
                f"the arena judge endpoint's key variable {api_key_env} is not set here; "
                "export it, or leave 'judge.api_key' out for an endpoint without a key"
            )

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env is not None:
            headers["Authorization"] = f"Bearer {os.environ.get(self.api_key_env, '')}"
        return headers

    def complete(self, prompt: str) -> str:
        """The endpoint's reply to one user message."""
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": self.max_new_tokens,
                "temperature": 0,
            }
        ).encode("utf-8")
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
            self.requests += 1
            request = urllib.request.Request(self.url, body, self._headers(), method="POST")
            wait = self.backoff_s * 2**attempt
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    document = json.loads(response.read().decode("utf-8"))
                return str(document["choices"][0]["message"]["content"] or "")
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code}"
                if err.code != 429 and err.code < 500:
                    raise EndpointJudgeError(
                        f"judge endpoint {self.url} refused the request ({last}); check "
                        "'judge.base_url', 'judge.model' and the key variable"
                    ) from None
                after = err.headers.get("Retry-After") if err.headers else None
                if after:
                    with contextlib.suppress(ValueError):
                        wait = max(wait, float(after))
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                last = f"no answer ({type(err).__name__})"
            except (ValueError, KeyError, IndexError, TypeError):
                raise EndpointJudgeError(
                    f"judge endpoint {self.url} answered something other than an OpenAI chat "
                    "completion (choices[0].message.content)"
                ) from None
            if attempt < self.retries:
                self.sleep(min(wait, MAX_WAIT_S))
        raise EndpointJudgeError(
            f"judge endpoint {self.url}: {last} after {self.retries} retries; try again "
            "later or raise 'judge.retries'"
        )

    def verdict(
        self, question: str, first: str, second: str, reference: Reference | None = None
    ) -> tuple[Verdict | None, str]:
        text = self.complete(judge_prompt(self.rubric, question, first, second, reference))
        return parse_verdict(text), text
