"""Runner `serve`, request origin: Host, Origin and body-type checks in front of every route,
so a web page on another site cannot drive a server on this machine (the serving runtime
and the dashboard both use it).

Three ways a browser reaches a loopback service for a page on another site, and what stops
each here:
- a "simple" cross-site POST (text/plain, a form) needs no preflight: bodies must carry one
  of the allowed types (the runtime: application/json), else 415;
- a cross-origin fetch or form post: an `Origin` other than the server's own, or
  `Sec-Fetch-Site: cross-site`, is refused with 403;
- DNS rebinding, a name the attacker re-points at 127.0.0.1, which makes the page
  same-origin: the `Host` header still shows that name. On a connection that arrived on a
  loopback address the Host must be a loopback name or address (with the port the
  connection arrived on) or one of `allowed_hosts`, else 403. A connection that arrived on
  another address (a container or pod serving a network) is not Host-checked: names there
  are the operator's (service names, ingress hosts), and the API key is the guard.
Clients that are not browsers send neither Origin nor Sec-Fetch-Site and are not affected.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable
from typing import Any

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
BODY_METHODS = {b"POST", b"PUT", b"PATCH", b"DELETE"}


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 with or without brackets) is this machine."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, int | None] | None:
    """('name', port or None) from a Host header; None when it is malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket:
            return None
        port = rest.removeprefix(":") if rest.startswith(":") else None
        if rest and port is None:
            return None
    else:
        name, colon, port = value.rpartition(":")
        if not colon:
            name, port = value, None
    if not name:
        return None
    if port is None:
        return name, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return name, int(port)


class RequestOriginMiddleware:
    """Pure ASGI: refuses DNS-rebinding Hosts, cross-origin browser requests and bodies of
    other types than `body_types`, before any route (or the key check) runs."""

    def __init__(
        self,
        app: Any,
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
        body_types: Iterable[str] = (JSON,),
        json_errors: bool = True,
        on_refuse: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.allowed_hosts = {h.strip().lower() for h in allowed_hosts}
        self.allowed_origins = {o.strip().lower().rstrip("/") for o in allowed_origins}
        self.body_types = {t.lower() for t in body_types}
        self.json_errors = json_errors
        self.on_refuse = on_refuse

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.check(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, code, message = refusal
        if self.on_refuse is not None:
            self.on_refuse(code)
        await self.refuse(send, status, code, message)

    def check(self, scope: dict) -> tuple[int, str, str] | None:
        """(status, code, message) for a refused request; None to let it through."""
        headers: dict[bytes, bytes] = {}
        for key, value in scope["headers"]:
            headers.setdefault(key.lower(), value)
        host = headers.get(b"host", b"").decode("latin-1")
        problem = self.host_problem(scope, host)
        if problem is not None:
            return 403, "host_not_allowed", problem
        problem = self.origin_problem(scope, headers, host)
        if problem is not None:
            return 403, "cross_origin", problem
        if scope["method"].encode() in BODY_METHODS and self.has_body(headers):
            media = headers.get(b"content-type", b"").decode("latin-1")
            media = media.split(";", 1)[0].strip().lower()
            if media not in self.body_types:
                wanted = " or ".join(f"'Content-Type: {t}'" for t in sorted(self.body_types))
                shown = f"'{media}'" if media else "no Content-Type"
                return (
                    415,
                    "unsupported_media_type",
                    f"request bodies must be sent with {wanted}; this one has {shown}",
                )
        return None

    def host_problem(self, scope: dict, host: str) -> str | None:
        server = scope.get("server")
        if not server or not is_loopback(str(server[0])):
            return None  # arrived on a network address: see the module docstring
        if not host:
            return None  # HTTP/1.0 without Host: not a browser
        parsed = split_host(host)
        if parsed is not None:
            name, port = parsed
            if name in self.allowed_hosts or host.strip().lower() in self.allowed_hosts:
                return None
            if is_loopback(name) and port in (None, server[1]):
                return None
        return (
            f"Host '{host}' is not this server's: it listens on a loopback address, which a "
            f"browser reaches as http://127.0.0.1:{server[1]} or http://localhost:{server[1]}; "
            "another name here is how DNS rebinding reaches it (a name you use on purpose "
            "goes in allowed_hosts)"
        )

    def origin_problem(self, scope: dict, headers: dict[bytes, bytes], host: str) -> str | None:
        origin = headers.get(b"origin")
        if origin is not None:
            given = origin.decode("latin-1").strip().lower().rstrip("/")
            own = f"{scope.get('scheme', 'http')}://{host.strip().lower()}"
            if given in self.allowed_origins or (host and given == own):
                return None
            return (
                f"cross-origin request refused: Origin '{given}' is not this server's "
                f"({own}); a web page on another site may not call it"
            )
        if headers.get(b"sec-fetch-site", b"").strip().lower() == b"cross-site":
            return "cross-site request refused (Sec-Fetch-Site: cross-site)"
        return None

    @staticmethod
    def has_body(headers: dict[bytes, bytes]) -> bool:
        length = headers.get(b"content-length")
        if length is not None:
            return length.strip() not in (b"0", b"")
        return b"transfer-encoding" in headers

    async def refuse(self, send: Any, status: int, code: str, message: str) -> None:
        if self.json_errors:
            error = {"message": message, "type": "invalid_request_error", "param": None}
            body = json.dumps({"error": {**error, "code": code}}).encode()
            media = b"application/json"
        else:
            body = f"{status}: {message}\n".encode()
            media = b"text/plain; charset=utf-8"
        headers = [(b"content-type", media), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
