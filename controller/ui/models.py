"""Dashboard, models pages: registered models, their versions, aliases, lineage, model card,
files and metrics across suites, read from the registry with a few set queries."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import func, select

from controller.state.registry.arena import ScanStore
from controller.state.registry.schema import (
    AliasRow,
    LineageRow,
    MetricRow,
    ModelRow,
    TagRow,
    VersionRow,
)
from controller.ui.app import render, ui_state
from controller.ui.state import UiState

router = APIRouter()
PAGE_SIZE = 200  # versions listed on a model's page unless all are asked for


@dataclass
class ModelSummary:
    name: str
    description: str
    versions: int
    latest: int | None
    aliases: dict[str, int]


def list_models(state: UiState) -> list[ModelSummary]:
    registry = state.registry()
    if registry is None:
        return []
    with registry.sessions() as session:
        counts = dict(
            session.execute(
                select(VersionRow.model_id, func.count(VersionRow.id)).group_by(VersionRow.model_id)
            ).all()
        )
        latest = dict(
            session.execute(
                select(VersionRow.model_id, func.max(VersionRow.number)).group_by(
                    VersionRow.model_id
                )
            ).all()
        )
        aliases: dict[int, dict[str, int]] = defaultdict(dict)
        for model_id, alias, number in session.execute(
            select(AliasRow.model_id, AliasRow.name, VersionRow.number).join(
                VersionRow, VersionRow.id == AliasRow.version_id
            )
        ).all():
            aliases[model_id][alias] = number
        return [
            ModelSummary(
                m.name, m.description, counts.get(m.id, 0), latest.get(m.id), aliases[m.id]
            )
            for m in session.scalars(select(ModelRow).order_by(ModelRow.name)).all()
        ]


@dataclass
class VersionLine:
    number: int
    created: str
    parameters: int | None
    size_bytes: int
    kind: str
    run: str | None
    namespace: str | None
    aliases: list[str]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class ModelDetail:
    name: str
    description: str
    versions: list[VersionLine]
    metric_columns: list[str]
    total: int = 0


def model_detail(state: UiState, name: str, limit: int | None = PAGE_SIZE) -> ModelDetail | None:
    """The model's newest `limit` versions (all with None), by column queries (no ORM objects,
    so a model with thousands of versions stays quick)."""
    registry = state.registry()
    if registry is None:
        return None
    with registry.sessions() as session:
        model = session.scalar(select(ModelRow).where(ModelRow.name == name))
        if model is None:
            return None
        query = (
            select(
                VersionRow.id,
                VersionRow.number,
                VersionRow.created_at,
                VersionRow.parameters,
                VersionRow.size_bytes,
                VersionRow.source,
            )
            .where(VersionRow.model_id == model.id)
            .order_by(VersionRow.number.desc())
        )
        rows = session.execute(query if limit is None else query.limit(limit)).all()
        total = session.scalar(
            select(func.count(VersionRow.id)).where(VersionRow.model_id == model.id)
        )
        ids = [r.id for r in rows]
        tags: dict[int, dict[str, str]] = defaultdict(dict)
        for version_id, key, value in session.execute(
            select(TagRow.version_id, TagRow.key, TagRow.value).where(
                TagRow.version_id.in_(ids), TagRow.key.in_(("kind", "namespace"))
            )
        ):
            tags[version_id][key] = value
        runs = dict(
            session.execute(
                select(LineageRow.version_id, LineageRow.experiment_run).where(
                    LineageRow.version_id.in_(ids)
                )
            ).all()
        )
        aliases: dict[int, list[str]] = defaultdict(list)
        for alias in session.scalars(select(AliasRow).where(AliasRow.model_id == model.id)):
            aliases[alias.version_id].append(alias.name)
        metrics: dict[int, dict[str, float]] = defaultdict(dict)
        for version_id, suite, metric, value, namespace in session.execute(
            select(
                MetricRow.version_id,
                MetricRow.suite,
                MetricRow.name,
                MetricRow.value,
                MetricRow.namespace,
            )
            .where(MetricRow.version_id.in_(ids))
            .order_by(MetricRow.id)
        ):
            metrics[version_id][f"{metric_suite(suite, namespace)}: {metric}"] = value
        lines = [
            VersionLine(
                number=row.number,
                created=f"{row.created_at:%Y-%m-%d %H:%M}" if row.created_at else "",
                parameters=row.parameters,
                size_bytes=row.size_bytes,
                kind=tags[row.id].get("kind") or (row.source or {}).get("type", ""),
                run=runs.get(row.id),
                namespace=tags[row.id].get("namespace"),
                aliases=sorted(aliases[row.id]),
                metrics=metrics[row.id],
            )
            for row in rows
        ]
        columns = sorted({k for m in metrics.values() for k in m})
        return ModelDetail(model.name, model.description, lines, columns, int(total or 0))


@dataclass
class VersionDetail:
    ref: str
    row: VersionRow
    aliases: list[str]
    tags: dict[str, str]
    lineage: dict[str, Any]
    files: list[tuple[str, int, str]]
    metrics: list[tuple[str, str, float]]
    card_html: str
    scans: int


def version_detail(state: UiState, name: str, number: int) -> VersionDetail | None:
    from markdown_it import MarkdownIt

    registry = state.registry()
    if registry is None:
        return None
    row = registry.find(f"{name}@{number}")
    if row is None:
        return None
    lineage: dict[str, Any] = {}
    line: LineageRow | None = row.lineage
    if line is not None:
        base = None
        if line.base_version_id is not None:
            with registry.sessions() as session:
                found = session.get(VersionRow, line.base_version_id)
                base = f"{found.model.name}@{found.number}" if found else None
        lineage = {
            "base": base,
            "dataset version": line.dataset_version,
            "experiment run": line.experiment_run,
            "git commit": line.git_commit,
            "config digest": line.config_digest,
            "seeds": line.seeds or None,
        }
    card = demote_headings(
        MarkdownIt("commonmark", {"html": False}).enable("table").render(row.card or "")
    )
    return VersionDetail(
        ref=f"{name}@{number}",
        row=row,
        aliases=sorted(a.name for a in row.model.aliases if a.version_id == row.id),
        tags={t.key: t.value for t in row.tags},
        lineage={k: v for k, v in lineage.items() if v},
        files=[(f.path, f.size, f.sha256) for f in row.files],
        metrics=sorted((metric_suite(m.suite, m.namespace), m.name, m.value) for m in row.metrics),
        card_html=card,
        scans=len(ScanStore(registry).for_version(row.id)),
    )


def metric_suite(suite: str, namespace: str | None) -> str:
    """A metric's suite as the pages show it: numbers a ref main does not trust (a pull
    request's apply on a shared state folder) are labelled, never shown as main's."""
    return suite if namespace in (None, "trusted") else f"{suite} (untrusted)"


def demote_headings(html: str, by: int = 2) -> str:
    """Headings of embedded Markdown moved below the page's own (h1 becomes h3)."""
    return re.sub(
        r"<(/?)h([1-6])>", lambda m: f"<{m.group(1)}h{min(6, int(m.group(2)) + by)}>", html
    )


def tagged_versions(state: UiState, key: str) -> dict[str, list[tuple[str, int, int]]]:
    """Tag value -> [(model, number, version id)] for versions carrying the tag `key`."""
    registry = state.registry()
    out: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    if registry is None:
        return out
    with registry.sessions() as session:
        for value, model, number, version_id in session.execute(
            select(TagRow.value, ModelRow.name, VersionRow.number, VersionRow.id)
            .join(VersionRow, VersionRow.id == TagRow.version_id)
            .join(ModelRow, ModelRow.id == VersionRow.model_id)
            .where(TagRow.key == key)
            .order_by(VersionRow.id)
        ):
            out[value].append((model, number, version_id))
    return out


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request) -> HTMLResponse:
    return render(request, "models.html", title="Models", models=list_models(ui_state(request)))


@router.get("/models/{name}", response_class=HTMLResponse)
def model_page(request: Request, name: str, all: bool = False) -> HTMLResponse:
    detail = model_detail(ui_state(request), name, None if all else PAGE_SIZE)
    if detail is None:
        raise HTTPException(404, f"no model '{name}' in the registry")
    return render(request, "model.html", title=f"Model {name}", model=detail)


@router.get("/models/{name}/{number}", response_class=HTMLResponse)
def version_page(request: Request, name: str, number: int) -> HTMLResponse:
    detail = version_detail(ui_state(request), name, number)
    if detail is None:
        raise HTTPException(404, f"no version {name}@{number} in the registry")
    return render(request, "version.html", title=detail.ref, version=detail)
