"""Runner `serve`, accounting: inside the key check, each client's quotas are enforced on API
requests (/v1/...) and what each request used is counted: Prometheus counters by client, the
daily token quota, and a row in the usage log."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from runners.serve.config import ANONYMOUS_CLIENT
from runners.serve.errors import APIError
from runners.serve.metrics import (
    CLIENT_COMPLETION_TOKENS,
    CLIENT_PROMPT_TOKENS,
    CLIENT_REFUSED,
    CLIENT_REQUESTS,
    REJECTED,
    route_of,
)
from runners.serve.middleware import send_error
from runners.serve.quotas import QuotaBook, Refusal
from runners.serve.throttle import retry_after
from runners.serve.usage import USAGE, RequestUsage, UsageLog, current_client, row

API_PREFIXES = ("/v1/", "/openai/v1/")
UNITS = {"requests_per_minute": "requests per minute", "tokens_per_day": "tokens per day"}


def is_api(path: str) -> bool:
    """OpenAI's routes: what quotas limit and usage counts (not /metrics, which a scraper
    calls with a key, nor the health probes)."""
    return path.startswith(API_PREFIXES)


def quota_error(client: str, refusal: Refusal) -> APIError:
    unit = UNITS[refusal.quota]
    when = "midnight UTC" if refusal.quota == "tokens_per_day" else "the minute's oldest ends"
    wait = retry_after(refusal.wait_s)
    return APIError(
        429,
        f"client '{client}' reached its quota of {refusal.limit} {unit}; retry after "
        f"{wait} s ({when}); other clients are not affected",
        type="rate_limit_error",
        code="rate_limit_exceeded",
        headers={"Retry-After": wait},
    )


class UsageMiddleware:
    def __init__(self, app: Any, book: QuotaBook, log: UsageLog | None, model_version: str) -> None:
        self.app = app
        self.book = book
        self.log = log
        self.model_version = model_version

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not is_api(scope["path"]):
            await self.app(scope, receive, send)
            return
        client = current_client() or ANONYMOUS_CLIENT
        refusal = self.book.admit(client)
        if refusal is not None:
            REJECTED.labels("quota").inc()
            CLIENT_REFUSED.labels(client, refusal.quota).inc()
            await send_error(send, quota_error(client, refusal))
            return
        usage = RequestUsage()
        token = USAGE.set(usage)
        state: dict[str, Any] = {"status": 500, "done": False}
        route = route_of(scope["path"])

        def account() -> dict[str, Any] | None:
            """Counts the request once; the usage row to write, if a log is kept."""
            if state["done"]:
                return None
            state["done"] = True
            self.book.spend(client, usage.total)
            CLIENT_REQUESTS.labels(client).inc()
            CLIENT_PROMPT_TOKENS.labels(client).inc(usage.prompt_tokens)
            CLIENT_COMPLETION_TOKENS.labels(client).inc(usage.completion_tokens)
            if self.log is None:
                return None
            return row(client, route, int(state["status"]), usage, self.model_version)

        async def accounting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # Before the last byte goes out, so a client that reads its usage right after
                # its answer finds this request in it. Off the event loop: a file lock.
                written = account()
                if written is not None:
                    # Shielded: a client that hangs up cancels this send, and a cancelled
                    # executor job that had not started would never write the row.
                    loop = asyncio.get_running_loop()
                    await asyncio.shield(loop.run_in_executor(None, self._write, written))
            await send(message)

        try:
            await self.app(scope, receive, accounting_send)
        finally:
            USAGE.reset(token)
            # The client left mid-answer, or an error escaped: counted all the same.
            written = account()
            if written is not None:
                asyncio.get_running_loop().run_in_executor(None, self._write, written)

    def _write(self, data: dict[str, Any]) -> None:
        assert self.log is not None
        try:
            self.log.append(data)
        except OSError as err:  # a full disk must not fail a request the client already has
            print(f"llmops-serve: could not record usage: {err}", file=sys.stderr, flush=True)
