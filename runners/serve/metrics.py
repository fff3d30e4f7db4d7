"""Runner `serve`, metrics: Prometheus series kserve's /metrics exposes next to its own."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

PREFIX = "llmops_serve"
# Routes are labelled by template, never by raw path, so label values stay few.
ROUTES = (
    "/v1/models",
    "/v1/models/{model}",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/feedback",
    "/v1/embeddings",
)

REQUESTS = Counter(f"{PREFIX}_requests", "HTTP requests by route and status", ["route", "status"])
LATENCY = Histogram(
    f"{PREFIX}_request_seconds",
    "Time from request to the last byte of the response",
    ["route"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
IN_FLIGHT = Gauge(f"{PREFIX}_in_flight", "Requests generating now")
QUEUED = Gauge(f"{PREFIX}_queued", "Requests waiting for a generation slot")
PROMPT_TOKENS = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens processed")
GENERATED_TOKENS = Counter(f"{PREFIX}_generated_tokens", "Tokens generated")
REJECTED = Counter(f"{PREFIX}_rejected", "Requests refused by a limit", ["reason"])
# Per client (accounting.py); label values are the configured client names, so they stay few.
CLIENT_REQUESTS = Counter(f"{PREFIX}_client_requests", "API requests by client", ["client"])
CLIENT_PROMPT_TOKENS = Counter(
    f"{PREFIX}_client_prompt_tokens", "Prompt tokens of finished requests by client", ["client"]
)
CLIENT_COMPLETION_TOKENS = Counter(
    f"{PREFIX}_client_completion_tokens",
    "Completion tokens of finished requests by client",
    ["client"],
)
CLIENT_REFUSED = Counter(
    f"{PREFIX}_client_refused", "Requests refused by a client's quota", ["client", "quota"]
)


def route_of(path: str) -> str:
    path = path.removeprefix("/openai")
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    return path if path in ROUTES else "other"


class MetricsMiddleware:
    """Counts every response by route and status and times it to its last byte (streams too)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_of(scope["path"])
        if route == "other":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state = {"status": 500, "counted": False}

        def count(status: int) -> None:
            if not state["counted"]:
                state["counted"] = True
                REQUESTS.labels(route, str(status)).inc()
                LATENCY.labels(route).observe(time.perf_counter() - start)

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                count(int(state["status"]))

        try:
            await self.app(scope, receive, counting_send)
        finally:
            # An exception answers 500 further out; a stream the client left is nginx's 499.
            count(499 if state["status"] != 500 else 500)
