"""Dashboard, history page: a resource's timeline from git (controller/history/): each
commit that changed its spec or lock entry, with author, pull request, digests and what a
deployment served."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from controller.history.git_reader import history
from controller.ui.app import render, ui_state
from controller.ui.state import UiState
from runners.errors import LlmopsError

router = APIRouter()
LIMIT = 50


@dataclass
class Timeline:
    resource: str | None
    address: str | None = None
    changes: list[Any] = field(default_factory=list)
    error: str | None = None


def timeline(state: UiState, resource: str | None) -> Timeline:
    if not resource:
        return Timeline(None)
    try:
        target, changes, _ = history(state.root, resource, limit=LIMIT)
    except LlmopsError as err:
        return Timeline(resource, error=str(err))
    except Exception as err:  # git refusals (no repository, no commits) shown as text
        return Timeline(resource, error=f"git history is not available: {err}")
    return Timeline(resource, target.address, changes)


@router.get("/history", response_class=HTMLResponse)
def history_page(request: Request, resource: str | None = None) -> HTMLResponse:
    state = ui_state(request)
    return render(
        request,
        "history.html",
        title="History",
        resources=sorted(state.lock().resources),
        timeline=timeline(state, resource),
    )
