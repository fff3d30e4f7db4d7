"""Dashboard, datasets pages: prepared versions with rows per split and per step, length
statistics and histogram, sample rows, and the diff between two versions."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from controller.state.registry.schema import DatasetRow, DatasetVersionRow
from controller.ui.app import render, ui_state
from controller.ui.charts import HistogramBar, histogram_bars
from controller.ui.state import UiState
from runners.data.diff import diff_rows

router = APIRouter()
SAMPLE_ROWS = 5


@dataclass
class DatasetVersion:
    version: str
    created: str
    rows: dict[str, int]
    steps: list[dict[str, Any]]
    lengths: dict[str, dict[str, Any]]
    histograms: dict[str, list[HistogramBar]]
    unit: str
    current: bool  # the version the lock file records


@dataclass
class DatasetDetail:
    name: str
    versions: list[DatasetVersion]
    samples: list[dict[str, Any]] = field(default_factory=list)
    fmt: str = ""


def list_datasets(state: UiState) -> list[tuple[str, int, dict[str, int]]]:
    """(name, versions, rows per split of the newest version)."""
    registry = state.registry()
    if registry is None:
        return []
    with registry.sessions() as session:
        out = []
        for dataset in session.scalars(select(DatasetRow).order_by(DatasetRow.name)).all():
            versions = dataset.versions
            out.append((dataset.name, len(versions), dict(versions[-1].rows) if versions else {}))
        return out


def _version(row: DatasetVersionRow, current: str | None) -> DatasetVersion:
    stats = dict(row.stats or {})
    lengths = {k: v for k, v in (stats.get("lengths") or {}).items() if v.get("count")}
    return DatasetVersion(
        version=row.version,
        created=f"{row.created_at:%Y-%m-%d %H:%M}" if row.created_at else "",
        rows=dict(row.rows or {}),
        steps=list(stats.get("steps") or []),
        lengths={
            k: {m: v.get(m) for m in ("count", "min", "mean", "p50", "p95", "max")}
            for k, v in lengths.items()
        },
        histograms={k: histogram_bars(v.get("histogram")) for k, v in lengths.items()},
        unit=str(stats.get("length_unit", "")),
        current=row.version == current,
    )


def dataset_detail(state: UiState, name: str) -> DatasetDetail | None:
    registry = state.registry()
    if registry is None:
        return None
    entry = state.lock().get(f"Dataset/{name}")
    current = getattr(entry.outputs, "version", None) if entry else None
    rows = registry.datasets.history(name)
    if not rows:
        return None
    versions = [_version(r, current) for r in reversed(rows)]
    shown = next((v for v in versions if v.current), versions[0])
    folder = state.paths.dataset_version(name, shown.version)
    fmt = str((rows[-1].stats or {}).get("format", ""))
    return DatasetDetail(name, versions, read_rows(folder / "train.jsonl", SAMPLE_ROWS), fmt)


def read_rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` rows of a prepared split (all with None); [] when it is not here."""
    out: list[dict[str, Any]] = []
    try:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    out.append(json.loads(line))
                if limit is not None and len(out) >= limit:
                    break
    except FileNotFoundError:
        return []
    return out


def dataset_diff(state: UiState, name: str, before: str, after: str) -> dict[str, Any] | None:
    """Rows added, removed and changed between two prepared versions (every split)."""
    detail = dataset_detail(state, name)
    if detail is None:
        return None
    known = {v.version for v in detail.versions}
    if before not in known or after not in known:
        return None

    def rows_of(version: str) -> list[dict[str, Any]]:
        folder = state.paths.dataset_version(name, version)
        return [
            r
            for split in ("train", "validation", "test")
            for r in read_rows(folder / f"{split}.jsonl")
        ]

    return diff_rows(rows_of(before), rows_of(after), detail.fmt or "instruction")


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request) -> HTMLResponse:
    return render(
        request, "datasets.html", title="Datasets", datasets=list_datasets(ui_state(request))
    )


@router.get("/datasets/{name}", response_class=HTMLResponse)
def dataset_page(
    request: Request, name: str, before: str | None = None, after: str | None = None
) -> HTMLResponse:
    state = ui_state(request)
    detail = dataset_detail(state, name)
    if detail is None:
        raise HTTPException(404, f"no prepared dataset '{name}'")
    diff = dataset_diff(state, name, before, after) if before and after else None
    return render(
        request,
        "dataset.html",
        title=f"Dataset {name}",
        dataset=detail,
        diff=diff,
        before=before,
        after=after,
    )
