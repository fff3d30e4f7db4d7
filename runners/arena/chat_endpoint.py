"""Runner `arena`, chat endpoint client: one OpenAI-compatible `<base_url>/chat/completions`
request with retries, shared by the endpoint judge and endpoint contestants.

429 and 5xx replies and dropped connections are retried with exponential backoff (a
Retry-After header is honoured, capped). The key is read from its environment variable when
a request is made and sent only in the Authorization header; it is in no message, record or
return value. Counters are safe to update from several threads (contestants ask
concurrently).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runners.errors import InvalidInput, LlmopsError

MAX_WAIT_S = 30.0


class EndpointError(LlmopsError):
    """The endpoint did not answer usefully after its retries; the message says why."""


@dataclass(frozen=True)
class ChatReply:
    text: str
    latency_s: float  # of the request that answered (retries and waits not included)
    prompt_tokens: int | None = None  # from the reply's `usage`, when it has one
    completion_tokens: int | None = None


class ChatEndpoint:
    """An OpenAI-compatible chat endpoint; counts requests and retries.

    `what` names the endpoint in messages ("judge endpoint"); `fields` is the spec path of
    its settings ("judge", "models[2].endpoint") and `check` what to check when it refuses
    a request (by default its base_url, model and key variable), so an error says what to
    change."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        retries: int = 4,
        timeout_s: float = 60.0,
        backoff_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        what: str = "endpoint",
        fields: str = "endpoint",
        error: type[LlmopsError] = EndpointError,
        check: str | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.retries = retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.sleep = sleep
        self.what = what
        self.fields = fields
        self.error = error
        self.check = (
            check
            or (
                f"'{fields}.base_url', '{fields}.model' and the key variable {api_key_env or ''}"
            ).rstrip()
        )
        self.requests = 0  # HTTP requests sent, retries included
        self.retried = 0  # of those, retries after a 429, a 5xx or a dropped connection
        self._lock = threading.Lock()
        if api_key_env is not None and not os.environ.get(api_key_env):
            raise InvalidInput(
                f"the {what}'s key variable {api_key_env} is not set here; export it, or "
                f"leave '{fields}.api_key' out for an endpoint without a key"
            )

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env is not None:
            headers["Authorization"] = f"Bearer {os.environ.get(self.api_key_env, '')}"
        return headers

    def _count(self, retry: bool) -> None:
        with self._lock:
            self.requests += 1
            self.retried += int(retry)

    def chat(self, prompt: str, max_tokens: int, **settings: Any) -> ChatReply:
        """The endpoint's reply to one user message; `settings` (temperature, top_p, seed,
        stop) go into the request as written, None values left out."""
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            **{k: v for k, v in settings.items() if v is not None},
        }
        body = json.dumps(payload).encode("utf-8")
        last = ""
        for attempt in range(self.retries + 1):
            self._count(retry=attempt > 0)
            request = urllib.request.Request(self.url, body, self._headers(), method="POST")
            wait = self.backoff_s * 2**attempt
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    document = json.loads(response.read().decode("utf-8"))
                latency = time.perf_counter() - started
                text = str(document["choices"][0]["message"]["content"] or "")
                usage = document.get("usage") or {}
                return ChatReply(
                    text,
                    latency,
                    _tokens(usage.get("prompt_tokens")),
                    _tokens(usage.get("completion_tokens")),
                )
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code}"
                if err.code != 429 and err.code < 500:
                    raise self.error(
                        f"{self.what} {self.url} refused the request ({last}); check {self.check}"
                    ) from None
                after = err.headers.get("Retry-After") if err.headers else None
                if after:
                    with contextlib.suppress(ValueError):
                        wait = max(wait, float(after))
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                last = f"no answer ({type(err).__name__})"
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                raise self.error(
                    f"{self.what} {self.url} answered something other than an OpenAI chat "
                    "completion (choices[0].message.content)"
                ) from None
            if attempt < self.retries:
                self.sleep(min(wait, MAX_WAIT_S))
        raise self.error(
            f"{self.what} {self.url}: {last} after {self.retries} retries; try again later "
            f"or raise '{self.fields}.retries'"
        )


def _tokens(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
