"""Dashboard, brain scan pages: per model version, what the fine-tune changed (modules,
layers, neurons) first, then its alarms (one per phenomenon, what the base has too apart as
context) with reasons and hints, and the heatmaps the inspect runner drew (served from the
blob store) with the cells outside their colour scales named."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse
from sqlalchemy import select

from controller.state.registry.schema import ModelRow, ScanRow, VersionRow
from controller.ui.app import render, ui_state
from controller.ui.state import UiState

router = APIRouter()


@dataclass
class ScanLine:
    id: int
    version: str
    against: str | None
    alarms: int
    errors: int


def _alarms(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Alarms as dicts whether stored as rule dicts or as "severity: reason" strings."""
    out = []
    for alarm in summary.get("alarms") or []:
        if isinstance(alarm, dict):
            out.append(alarm)
        else:
            severity, _, reason = str(alarm).partition(": ")
            out.append({"severity": severity, "reason": reason or severity})
    return out


def list_scans(state: UiState) -> list[ScanLine]:
    registry = state.registry()
    if registry is None:
        return []
    with registry.sessions() as session:
        rows = session.execute(
            select(ScanRow.id, ModelRow.name, VersionRow.number, ScanRow.summary)
            .join(VersionRow, VersionRow.id == ScanRow.version_id)
            .join(ModelRow, ModelRow.id == VersionRow.model_id)
            .order_by(ModelRow.name, VersionRow.number.desc(), ScanRow.id.desc())
        ).all()
    out = []
    for scan_id, model, number, summary in rows:
        alarms = _alarms(summary or {})
        out.append(
            ScanLine(
                scan_id,
                f"{model}@{number}",
                (summary or {}).get("against"),
                len(alarms),
                sum(1 for a in alarms if a.get("severity") == "error"),
            )
        )
    return out


@dataclass
class ScanView:
    id: int
    version: str
    against: str | None
    modules_changed: list[str]
    layers: list[Any]
    alarms: list[dict[str, Any]]
    images: list[str]
    changes: dict[str, Any] = field(default_factory=dict)  # modules, layers, neurons
    context: list[dict[str, Any]] = field(default_factory=list)  # what the base has too
    clipped: dict[str, str] = field(default_factory=dict)  # image -> cells off its colour scale

    @property
    def phenomena(self) -> int:
        """Distinct phenomena among the alarms (each alarm is one, when grouped)."""
        return len({a.get("phenomenon") or a.get("reason") for a in self.alarms})


def scan_view(state: UiState, scan_id: int) -> ScanView | None:
    registry = state.registry()
    if registry is None:
        return None
    with registry.sessions() as session:
        row = session.get(ScanRow, scan_id)
        if row is None:
            return None
        version = session.get(VersionRow, row.version_id)
        ref = f"{version.model.name}@{version.number}" if version else str(row.version_id)
        summary, files = dict(row.summary or {}), dict(row.files or {})
    return ScanView(
        scan_id,
        ref,
        summary.get("against"),
        list(summary.get("modules_changed") or []),
        list(summary.get("layers_changed_most") or []),
        _alarms(summary),
        sorted(n for n in files if n.endswith(".png")),
        dict(summary.get("changes") or {}),
        list(summary.get("context") or []),
        dict(summary.get("clipped") or {}),
    )


@router.get("/scans", response_class=HTMLResponse)
def scans_page(request: Request, version: str | None = None) -> HTMLResponse:
    scans = [s for s in list_scans(ui_state(request)) if version in (None, s.version)]
    return render(request, "scans.html", title="Brain scans", scans=scans)


@router.get("/scans/{scan_id}", response_class=HTMLResponse)
def scan_page(request: Request, scan_id: int) -> HTMLResponse:
    view = scan_view(ui_state(request), scan_id)
    if view is None:
        raise HTTPException(404, f"no brain scan {scan_id}")
    return render(request, "scan.html", title=f"Brain scan of {view.version}", scan=view)


@router.get("/scans/{scan_id}/{name}")
def scan_file(request: Request, scan_id: int, name: str) -> FileResponse:
    """A PNG the scan stored (only names the scan lists, only images)."""
    registry = ui_state(request).registry()
    if registry is None or not name.endswith(".png"):
        raise HTTPException(404, "no such scan image")
    with registry.sessions() as session:
        row = session.get(ScanRow, scan_id)
        sha = (row.files or {}).get(name) if row else None
    if sha is None or not registry.blobs.exists(sha):
        raise HTTPException(404, "no such scan image")
    return FileResponse(registry.blobs.local(sha), media_type="image/png")
