"""Runner `serve`, middleware: API key and body-size limits in front of every route."""

from __future__ import annotations

import json
import secrets
from typing import Any

from runners.serve.config import DEFAULT_CLIENT
from runners.serve.errors import APIError
from runners.serve.metrics import REJECTED
from runners.serve.usage import CLIENT

# Deny by default: with a key configured, every path needs it except liveness and
# readiness, which probes (kubelet, docker HEALTHCHECK, the local rollout) call without one.
# kserve's own routes (/v2/models/*, /v2/repository/.../unload, /metrics, /openapi.json)
# and any route a later kserve adds are therefore guarded without being listed.
OPEN_PATHS = frozenset({"/", "/v2/health/live", "/v2/health/ready"})
OPEN_METHODS = frozenset({"GET", "HEAD"})


def is_open(scope: dict) -> bool:
    return scope["path"] in OPEN_PATHS and scope["method"] in OPEN_METHODS


class BodyTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"request body is larger than this deployment's limit of {limit} bytes; "
            "send a shorter request",
            code="request_too_large",
        )


async def send_error(send: Any, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def identify(given: bytes, keys: list[tuple[str, bytes]]) -> str | None:
    """The name of the client whose key `given` is. Every key is compared, in constant time
    each, so how long it takes says nothing about which key (or how much of one) matched."""
    found = None
    for name, key in keys:
        if secrets.compare_digest(given, key):
            found = name
    return found


class ApiKeyMiddleware:
    """With a key configured, every route but liveness and readiness needs
    `Authorization: Bearer <key>` (a Prometheus scraper of /metrics sends it too).

    `key` is the single api_key; `clients` maps client names to keys. The client a key
    identifies is set in usage.CLIENT for everything that runs for the request, and in the
    request's state (`request.state.client`)."""

    def __init__(
        self, app: Any, key: str | None = None, clients: dict[str, str] | None = None
    ) -> None:
        self.app = app
        keys = {**(clients or {}), **({DEFAULT_CLIENT: key} if key else {})}
        self.keys = [(name, value.encode()) for name, value in keys.items()]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if not self.keys or scope["type"] != "http" or is_open(scope):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        sent = scheme.lower() == b"bearer" and bool(given.strip())
        client = identify(given.strip(), self.keys) if sent else None
        if client is not None:
            scope.setdefault("state", {})["client"] = client
            token = CLIENT.set(client)
            try:
                await self.app(scope, receive, send)
            finally:
                CLIENT.reset(token)
            return
        if not sent:
            message = "missing API key: send the header 'Authorization: Bearer <key>'"
        else:
            message = "invalid API key: check the key this deployment's secret holds"
        REJECTED.labels("auth").inc()
        error = APIError(
            401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )
        await send_error(send, error)


class BodyLimitMiddleware:
    """413 for a Content-Length over the limit; a chunked body is counted as it arrives."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            REJECTED.labels("body_size").inc()
            await send_error(send, BodyTooLarge(self.limit))
            return
        seen = 0

        async def counting_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    REJECTED.labels("body_size").inc()
                    raise BodyTooLarge(self.limit)  # answered by the APIError handler
            return message

        await self.app(scope, counting_receive, send)


def json_error(error: APIError) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)
