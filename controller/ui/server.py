"""Dashboard, assembly: the FastAPI app over a repository, with every page's router, the
token gate and the request-origin check; `llmops ui` serves what `create_app` returns."""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from controller.ui import (
    arena,
    datasets,
    deployments,
    evaluations,
    history,
    models,
    overview,
    runs,
    scans,
)
from controller.ui.app import HERE, Gate
from controller.ui.overview import cached_overview
from controller.ui.state import UiState
from runners.serve.request_origin import FORM, JSON, RequestOriginMiddleware


def _warm(state: UiState) -> None:
    """Pay the one-time costs (the plan behind the overview, scipy for the ratings) at start,
    not on the first person's first page."""
    try:
        import scipy.optimize  # noqa: F401  (the arena's ratings; heavy, so loaded here)

        cached_overview(state)
    except Exception:  # a page shows the same problem when it is asked for
        return


def create_app(root: Path, token: str | None = None, secret: bytes | None = None) -> FastAPI:
    """The dashboard over the repository at `root`."""
    app = FastAPI(title="llmops", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ui = UiState.for_repo(root)
    app.state.token = token
    app.state.secret = secret or secrets.token_bytes(32)
    app.add_middleware(Gate)
    # Outermost: another site's page (a cross-origin post, a DNS-rebinding name for
    # 127.0.0.1) is refused before the token check and before a voter cookie is handed out.
    # The vote form posts form-encoded bodies from this origin; nothing else takes bodies.
    app.add_middleware(RequestOriginMiddleware, body_types=(FORM, JSON), json_errors=False)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    for module in (overview, models, datasets, runs, evaluations, arena, scans, deployments):
        app.include_router(module.router)
    app.include_router(history.router)

    threading.Thread(target=_warm, args=(app.state.ui,), daemon=True).start()

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    return app
