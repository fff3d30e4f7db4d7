"""Dashboard, shared pieces: templates and static files, rendering, the token check for
non-local binds and the voter cookie; controller/ui/server.py assembles the app from them."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from controller.ui.state import UiState

HERE = Path(__file__).parent
VOTER_COOKIE = "llmops_voter"
TOKEN_COOKIE = "llmops_token"
NAV = [
    ("/", "Overview"),
    ("/models", "Models"),
    ("/datasets", "Datasets"),
    ("/runs", "Runs"),
    ("/evaluations", "Evaluations"),
    ("/arena", "Arena"),
    ("/scans", "Brain scans"),
    ("/deployments", "Deployments"),
    ("/history", "History"),
]

templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.globals["nav"] = NAV


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


templates.env.filters["fmt"] = _fmt


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def render(request: Request, template: str, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, template, context)


def ui_state(request: Request) -> UiState:
    return request.app.state.ui  # type: ignore[no-any-return]


def voter_of(request: Request) -> str:
    return str(request.state.voter)


def form_token(request: Request) -> str:
    """A per-voter token for the vote form, so another site cannot post votes as this voter."""
    secret: bytes = request.app.state.secret
    return hmac.new(secret, voter_of(request).encode(), hashlib.sha256).hexdigest()[:32]


class Gate(BaseHTTPMiddleware):
    """The token (when one is required) and the voter cookie, for every request."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        token: str | None = request.app.state.token
        if token is not None and not request.url.path.startswith("/static/"):
            given = request.query_params.get("token")
            if given is not None and hmac.compare_digest(given, token):
                response = RedirectResponse(request.url.remove_query_params("token"), 303)
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
                return response
            header = request.headers.get("authorization", "")
            offered = request.cookies.get(TOKEN_COOKIE) or header.removeprefix("Bearer ").strip()
            if not offered or not hmac.compare_digest(offered, token):
                return PlainTextResponse(
                    "401: this dashboard needs its token: open it with ?token=<the token> "
                    "or send 'Authorization: Bearer <token>'",
                    status_code=401,
                )
        voter = request.cookies.get(VOTER_COOKIE)
        fresh = not voter or len(voter) > 64 or not voter.isalnum()
        request.state.voter = secrets.token_hex(16) if fresh else voter
        response = await call_next(request)
        if fresh:
            response.set_cookie(
                VOTER_COOKIE,
                request.state.voter,
                max_age=10 * 365 * 24 * 3600,
                httponly=True,
                samesite="lax",
            )
        return response
